"""One accepted simulator connection: reads frames, runs lanes, executes plans.

The decisions live in the pure modules (:mod:`~bridge.simulator.inbound`,
:mod:`~bridge.simulator.state`, :mod:`~bridge.simulator.plan`); this module only
schedules them and performs their steps on the socket.

Scheduling (protocol reference §4): one FIFO queue and worker task per lane, so a
lane never overlaps itself while lanes run concurrently; a semaphore caps the
responses in flight per connection (extra requests wait, they are not rejected).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from bridge_tools.simulator import events, rejections
from bridge_tools.simulator.events import IdFactory
from bridge_tools.simulator.inbound import BadFrame, CreateRequest, SteerRequest, parse_message
from bridge_tools.simulator.options import Closed, Received, SimulatorOptions
from bridge_tools.simulator.plan import plan_error, plan_request, plan_steer
from bridge_tools.simulator.state import ConnectionState, Lane, Parent, Snapshot
from bridge_tools.simulator.steps import (
    Abort,
    Close,
    Hang,
    MutePongs,
    Pause,
    Plan,
    Send,
    Settings,
    Settle,
    Step,
)

logger = logging.getLogger(__name__)

UNSUPPORTED_DATA = 1003  # RFC 6455 close code for a binary frame, when so configured
LIMIT_CLOSE_REASON = "connection limit reached"


@dataclass(slots=True)
class Shared:
    """What every connection of one simulator shares."""

    options: SimulatorOptions
    settings: Settings
    ids: IdFactory
    store: dict[str, Snapshot]
    record: Callable[[Received], None]


class Connection:
    """Serves one WebSocket until it closes; see the module docstring."""

    def __init__(self, ws: ServerConnection, number: int, shared: Shared) -> None:
        self.number = number
        self.server_initiated = False
        self._ws = ws
        self._shared = shared
        options = shared.options
        self._lanes = not options.legacy_single_lane
        self._state = ConnectionState(max_named_lanes=options.max_named_lanes)
        self._deadline = asyncio.get_running_loop().time() + options.max_connection_age
        self._queues: dict[Lane, asyncio.Queue[CreateRequest]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(options.max_in_flight if self._lanes else 1)
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def run(self, close_code: int | None = None) -> None:
        """Serve until the connection ends.

        Args:
            close_code: Close at once with this code (a handshake-level fault).
        """
        if close_code is not None:
            self.server_initiated = True
            await self._ws.close(close_code, "rejected by policy")
            return
        self._spawn(self._watch_age(), "age")
        try:
            async for message in self._ws:
                await self._on_message(message)
        except ConnectionClosed:
            pass
        finally:
            await self._stop_tasks()
            self._state.clear()

    def closed_record(self) -> Closed:
        """How the connection ended (call once it has)."""
        protocol = self._ws.protocol
        received, sent = protocol.close_rcvd, protocol.close_sent
        server_first = sent is not None and not protocol.close_rcvd_then_sent
        return Closed(
            connection=self.number,
            code=received.code if received else None,
            reason=received.reason if received else None,
            server_initiated=self.server_initiated or server_first,
            server_code=sent.code if sent else None,
        )

    def abort(self) -> None:
        """Drop the TCP connection without a Close frame."""
        self.server_initiated = True
        self._ws.transport.abort()

    async def close(self, code: int, reason: str = "") -> None:
        """Close the WebSocket with code."""
        self.server_initiated = True
        await self._ws.close(code, reason)

    # Reading

    async def _on_message(self, message: str | bytes) -> None:
        self._shared.record(Received(self.number, message, _frame_type(message)))
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("c%d > %s", self.number, _frame_type(message) or "(not an event)")
        parsed = parse_message(message, lanes=self._lanes)
        match parsed:
            case BadFrame(rejection):
                if isinstance(message, bytes) and self._shared.options.binary_frames == "close":
                    await self.close(UNSUPPORTED_DATA, "binary frames are not supported")
                    return
                await self._execute(plan_error(rejection, None, self._shared.settings), None)
            case SteerRequest():
                await self._execute(plan_steer(parsed), None)
            case CreateRequest():
                await self._on_create(parsed)

    async def _on_create(self, request: CreateRequest) -> None:
        settings = self._shared.settings
        if self._expired():
            limit = rejections.connection_limit_reached(self._shared.options.max_connection_age)
            await self._execute(plan_error(limit, None, settings), None)
            return
        refused = self._state.admit_lane(request.stream_id)
        if refused is not None:
            await self._execute(plan_error(refused, request.stream_id, settings), None)
            return
        queue = self._queues.get(request.stream_id)
        if queue is None:
            queue = self._queues[request.stream_id] = asyncio.Queue()
            self._spawn(self._run_lane(queue), f"lane.{request.stream_id or 'default'}")
        self._pending += 1
        self._idle.clear()
        queue.put_nowait(request)

    def _expired(self) -> bool:
        return asyncio.get_running_loop().time() >= self._deadline

    # Lanes

    async def _run_lane(self, queue: asyncio.Queue[CreateRequest]) -> None:
        while True:
            request = await queue.get()
            try:
                async with self._slots:
                    await self._serve(request)
            except ConnectionClosed:
                return
            finally:
                self._pending -= 1
                if self._pending == 0:
                    self._idle.set()

    async def _serve(self, request: CreateRequest) -> None:
        shared = self._shared
        parent = self._state.resolve(
            request.previous_response_id, store=request.store, persisted=shared.store
        )
        if isinstance(parent, Parent) and not parent.cached and shared.options.store_latency:
            await asyncio.sleep(shared.options.store_latency)
        plan = plan_request(
            request, parent, ids=shared.ids, now=int(time.time()), settings=shared.settings
        )
        await self._execute(plan, request)

    async def _execute(self, plan: Plan, request: CreateRequest | None) -> None:
        """Perform a plan's steps in order (raises ConnectionClosed if the peer left).

        A run of consecutive sends goes out in batches (:func:`_send_batch`): the same
        frames, the same bytes, in fewer writes.
        """
        steps = plan.steps
        index, count = 0, len(steps)
        while index < count:
            step = steps[index]
            if isinstance(step, Send):
                run = _run_of_sends(steps, index)
                await _send_batch(self._ws, run)
                index += len(run)
                continue
            index += 1
            match step:
                case Pause(seconds):
                    await asyncio.sleep(seconds)
                case Settle(succeeded):
                    self._settle(plan, request, succeeded=succeeded)
                case Abort():
                    logger.debug("c%d dropping the connection (scripted)", self.number)
                    self.abort()
                    return
                case Close(code, reason):
                    logger.debug("c%d closing with %d (scripted)", self.number, code)
                    await self.close(code, reason)
                    return
                case MutePongs():
                    _mute_pongs(self._ws)
                case Hang():
                    await asyncio.Event().wait()

    def _settle(self, plan: Plan, request: CreateRequest | None, *, succeeded: bool) -> None:
        if request is None:
            return
        if not succeeded:
            self._state.forget_failed(request.stream_id, request.previous_response_id)
        elif plan.snapshot is not None:
            self._state.remember(plan.snapshot)
            if plan.snapshot.store:
                self._shared.store[plan.snapshot.response_id] = plan.snapshot

    # Connection age

    async def _watch_age(self) -> None:
        """Past the maximum age, optionally push the limit error when idle, then close."""
        await asyncio.sleep(max(0.0, self._deadline - asyncio.get_running_loop().time()))
        options = self._shared.options
        if not options.push_limit_error:
            return
        await self._idle.wait()
        limit = rejections.connection_limit_reached(options.max_connection_age)
        event = events.error_event(limit, flat=options.flat_errors)
        try:
            await self._ws.send(events.encode(event))
            await self.close(options.limit_close_code, LIMIT_CLOSE_REASON)
        except ConnectionClosed:
            pass

    # Tasks

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=f"simulator.c{self.number}.{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "c%d task %s failed", self.number, task.get_name(), exc_info=task.exception()
            )
            self.abort()

    async def _stop_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# At most this many frames per batch: about 16 KiB of deltas, under websockets'
# 32 KiB write limit, so a batch waits for the peer as a single send would.
SEND_BATCH = 64


def _run_of_sends(steps: tuple[Step, ...], start: int) -> list[str]:
    """The frames of the run of sends that begins at ``start`` (at most SEND_BATCH)."""
    run: list[str] = []
    for step in steps[start : start + SEND_BATCH]:
        if not isinstance(step, Send):
            break
        run.append(step.encoded())
    return run


async def _send_batch(ws: ServerConnection, run: list[str]) -> None:
    """Send each event as its own text frame, as ``ws.send`` would, in one write.

    The frames and their bytes are what one ``ws.send`` per event produces; only
    the system calls differ: websockets writes every frame with its own
    ``transport.write`` (a ``send()`` each at full speed), which cost the
    simulator, a test harness, more CPU than its whole event loop. Flow control
    is the same: ``send_context`` checks that the connection is open, then
    drains once. Nothing awaits between the frames, so the protocol's pending
    writes are exactly these frames (an end of stream only follows a close,
    and the connection is open).
    """
    if len(run) == 1:
        await ws.send(run[0])
        return
    protocol = ws.protocol
    async with ws.send_context():
        for text in run:
            protocol.send_text(text.encode())
        ws.transport.write(b"".join(protocol.data_to_send()))


def _frame_type(message: str | bytes) -> str | None:
    if isinstance(message, bytes):
        return None
    try:
        frame = json.loads(message)
    except (ValueError, RecursionError):
        return None
    kind = frame.get("type") if isinstance(frame, dict) else None
    return kind if isinstance(kind, str) else None


def _mute_pongs(ws: ServerConnection) -> None:
    """Make the protocol drop the pongs it would send (the no_pong and hang faults)."""
    protocol = ws.protocol
    send_frame = protocol.send_frame

    def send_frame_but_pongs(frame: Frame) -> None:
        if frame.opcode is not Opcode.PONG:
            send_frame(frame)

    # websockets answers pings inside its protocol object; wrapping its frame writer on
    # this one connection is the only hook that withholds pongs and nothing else.
    protocol.send_frame = send_frame_but_pongs  # type: ignore[method-assign]

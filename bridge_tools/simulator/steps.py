"""The vocabulary of plans: steps, settings, and the stream that numbers events (no I/O).

A :class:`Plan` is what :mod:`~bridge_tools.simulator.plan` (text answers, errors) and
:mod:`~bridge_tools.simulator.tool_calls` (function calls) decide to do for one request;
:mod:`~bridge_tools.simulator.connection` only performs its steps. The helpers here are
the parts both planners share: numbering events on a lane (:class:`Stream`), streaming
deltas, and the mid-stream faults that interrupt them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge_tools.simulator import events, rejections
from bridge_tools.simulator.events import JSON
from bridge_tools.simulator.faults import Fault, FaultKind, close_reason
from bridge_tools.simulator.rejections import Rejection
from bridge_tools.simulator.state import Snapshot
from bridge_tools.simulator.text import count_tokens


@dataclass(frozen=True, slots=True)
class Send:
    """Send one event as a JSON text frame (``text``: its encoding, if made already)."""

    event: JSON
    text: str | None = field(default=None, compare=False)

    def encoded(self) -> str:
        """The frame's text: ``events.encode(event)``."""
        return self.text if self.text is not None else events.encode(self.event)


@dataclass(frozen=True, slots=True)
class Pause:
    """Send nothing for a while (pings are still answered)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Abort:
    """Drop the TCP connection without a Close frame (the client sees 1006)."""


@dataclass(frozen=True, slots=True)
class Close:
    """Close the WebSocket with this code and reason."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class MutePongs:
    """Stop answering pings on this connection."""


@dataclass(frozen=True, slots=True)
class Hang:
    """Send nothing more until the connection ends."""


@dataclass(frozen=True, slots=True)
class Settle:
    """The outcome is final: update the caches before the terminal frame goes out.

    Doing it first means a client that reacts to the terminal event at once (say, by
    forking from it on another lane) always finds the response cached.
    """

    succeeded: bool


Step = Send | Pause | Abort | Close | MutePongs | Hang | Settle


@dataclass(frozen=True, slots=True)
class Plan:
    """The steps for one request and what to cache if it succeeds."""

    steps: tuple[Step, ...]
    snapshot: Snapshot | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """The server-wide options that shape a plan."""

    seed: int = 0
    tokens_per_second: float | None = None
    first_token_delay: float = 0.0
    response_done: bool = False
    flat_errors: bool = False
    fixed_reply: str | None = None


@dataclass(slots=True)
class Stream:
    """Accumulates the steps of one response, numbering its events from 0."""

    stream_id: str | None
    settings: Settings
    steps: list[Step] = field(default_factory=list)
    sequence_number: int = 0

    def send(self, event_type: str, **fields: Any) -> None:
        self.add({"type": event_type, "sequence_number": self.sequence_number, **fields})

    def add(self, event: JSON, text: str | None = None) -> None:
        """Send ``event``, which starts with its type and this stream's next number
        (``text``: its encoding, this stream's ``stream_id`` included)."""
        if self.stream_id is not None:
            event["stream_id"] = self.stream_id
        self.sequence_number += 1
        self.steps.append(Send(event, text))

    def send_error(self, rejection: Rejection) -> None:
        """A mid-stream ``error`` event, which takes the next sequence number."""
        self.steps.append(Settle(succeeded=False))
        self.steps.append(
            Send(
                events.error_event(
                    rejection,
                    stream_id=self.stream_id,
                    sequence_number=self.sequence_number,
                    flat=self.settings.flat_errors,
                )
            )
        )
        self.sequence_number += 1

    def terminal(self, event_type: str) -> str:
        return "response.done" if self.settings.response_done else event_type

    def elapsed(self) -> int:
        return int(sum(step.seconds for step in self.steps if isinstance(step, Pause)))


def send_deltas(
    stream: Stream,
    event_type: str,
    deltas: list[str],
    where: JSON,
    *,
    fault: Fault | None,
    obfuscation: str | None,
    logprobs: bool = True,
) -> bool:
    """Add the delta events, and the fault halfway; False if the stream ends there.

    Args:
        event_type: ``response.output_text.delta`` or ``response.function_call_arguments.delta``.
        where: The fields that place each delta (``item_id``, ``output_index``, ...).
        fault: The request's fault; a mid-stream one is applied halfway.
        obfuscation: Key for the ``obfuscation`` padding; None to leave it out.
        logprobs: Add an empty ``logprobs`` list (text deltas carry one).
    """
    cut = len(deltas) // 2
    pace = stream.settings.tokens_per_second
    frame = _DeltaFrame.of(stream, event_type, where, logprobs=logprobs)
    for index in range(len(deltas) + 1):
        if index == cut and fault is not None and not mid_stream_fault(stream, fault):
            return False
        if index == len(deltas):
            break
        delta = deltas[index]
        if index > 0 and pace:
            stream.steps.append(Pause(count_tokens(delta) / pace))
        # What stream.send(event_type, **where, delta=...) builds, in one dict.
        event: JSON = {
            "type": event_type,
            "sequence_number": stream.sequence_number,
            **where,
            "delta": delta,
        }
        if logprobs:
            event["logprobs"] = []
        padding = None
        if obfuscation is not None:
            padding = event["obfuscation"] = events.obfuscation(f"{obfuscation}:{index}")
        stream.add(event, frame.text(stream.sequence_number, delta, padding) if frame else None)
    return True


# Keys a delta event sets itself: a ``where`` with one of them changes the key order.
_DELTA_KEYS = frozenset(["type", "sequence_number", "delta", "logprobs", "obfuscation"])


@dataclass(frozen=True, slots=True)
class _DeltaFrame:
    """A delta event's JSON text from its fixed parts, encoded once per response.

    ``events.encode`` of a whole delta event cost the simulator (a test harness)
    about 2.5 us per event at full speed; only the sequence number, the delta
    and its padding change from one delta to the next. The text is the same,
    byte for byte (tests/tools/test_simulator.py compares them).
    """

    head: str  # {"type":...,"sequence_number":
    middle: str  # ,<where>,"delta":
    after_delta: str  # ,"logprobs":[] or nothing
    end: str  # ,"stream_id":...} or }

    @classmethod
    def of(
        cls, stream: Stream, event_type: str, where: JSON, *, logprobs: bool
    ) -> _DeltaFrame | None:
        if not where or _DELTA_KEYS & where.keys() or "stream_id" in where:
            return None
        encode, string = events.encode, events.encode_string
        head = encode({"type": event_type, "sequence_number": 0})
        end = "}" if stream.stream_id is None else f',"stream_id":{string(stream.stream_id)}}}'
        return cls(
            head=head[: -len("0}")],
            middle=f',{encode(where)[1:-1]},"delta":',
            after_delta=',"logprobs":[]' if logprobs else "",
            end=end,
        )

    def text(self, sequence_number: int, delta: str, padding: str | None) -> str:
        string = events.encode_string
        obfuscation = "" if padding is None else f',"obfuscation":{string(padding)}'
        return (
            f"{self.head}{sequence_number}{self.middle}{string(delta)}"
            f"{self.after_delta}{obfuscation}{self.end}"
        )


def mid_stream_fault(stream: Stream, fault: Fault) -> bool:
    """Apply a mid-stream fault; False if the stream ends with it."""
    match fault.kind:
        case FaultKind.DROP_MID_STREAM:
            stream.steps.append(Abort())
            return False
        case FaultKind.CLOSE:
            code = fault.close_code if fault.close_code is not None else 1011
            stream.steps.append(Close(code, close_reason(code)))
            return False
        case FaultKind.ERROR_MID_STREAM:
            stream.send_error(rejections.server_error())
            return False
        case FaultKind.GAP:
            stream.steps.append(Pause(fault.seconds or 0.0))
            return True
        case _:
            return True

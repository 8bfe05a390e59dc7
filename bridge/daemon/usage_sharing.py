"""The day's usage on the broker and on disk: this instance's published, the others' read.

Every instance, standalone or one of a cluster, publishes its own book of
the day, retained, on ``P/bridge/instances/<name>/usage``
(:mod:`bridge.protocol.usage_documents`) when it changes, at most once a
second, and subscribes to ``P/bridge/instances/+/usage``: the retained
documents of every instance arrive right after the subscription, at
connect, before commands are served. They feed
:class:`~bridge.protocol.shared_usage.SharedUsage`, which the budgets read.
Our own retained document, read back after a restart, is merged into our
book (so the day's usage survives even a disk that cannot be written); to
keep a fresh start from overwriting it, our first document goes out only
once the link has been up for :data:`SETTLE` seconds.

The same loop moves the day with the clock, publishes ``P/bridge/usage``
(every instance's totals; at most every 5 s while they change) and saves
``usage.json`` (at most every 5 s while our book changes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Final

from bridge.daemon.usage_store import UsageStore
from bridge.mqtt.link import MqttLink
from bridge.ops.usage import usage_document, usage_topic
from bridge.protocol.contract import RESERVED_ID, Topics
from bridge.protocol.guardrails import Guardrails
from bridge.protocol.shared_usage import MAX_INSTANCES
from bridge.protocol.usage_documents import (
    UsageDocumentError,
    instance_document,
    read_instance_document,
)

logger = logging.getLogger(__name__)

PUBLISH_INTERVAL: Final = 1.0  # seconds between two publications of our own document, at least
USAGE_INTERVAL: Final = 5.0  # seconds between saves, and between P/bridge/usage publications
SETTLE: Final = 0.5  # seconds connected before our first document: our retained one is in
TICK: Final = 1.0  # seconds between looks at the clock (a new day)
MAX_WARNED: Final = 64  # instances whose bad documents are logged (once each)


class UsageSharing:
    """This instance's part in the prefix's usage of the day."""

    def __init__(
        self,
        guardrails: Guardrails,
        store: UsageStore,
        link: MqttLink,
        topics: Topics,
        local_now: Callable[[], datetime],
    ) -> None:
        self.guardrails = guardrails
        self.usage = guardrails.usage
        self.store = store
        self.link = link
        self.local_now = local_now
        self.name = self.usage.name
        self._instances = f"{topics.prefix}/{RESERVED_ID}/instances/"
        self.own_topic = f"{self._instances}{self.name}/usage"
        self.summary_topic = usage_topic(topics)
        link.listen_filter(f"{self._instances}+/usage", self._on_document)
        self._wake = asyncio.Event()
        self.usage.on_change = self._wake.set
        self._warned: set[str] = set()
        self._connected_at: float | None = None  # monotonic, first seen connected
        self._own_due = self._summary_due = self._save_due = 0.0
        self._summarised = -1  # the usage revision P/bridge/usage last showed

    async def run(self) -> None:
        """Until cancelled: roll the day, publish, save (see the module)."""
        while True:
            self._wake.clear()
            now = time.monotonic()
            self.usage.roll(self.local_now().date())
            if self._settled(now):
                self._publish_own(now)
                self._publish_summary(now)
            if self.usage.unsaved and now >= self._save_due and self.store.due(now):
                self.store.save(self.usage, now)
                self._save_due = now + USAGE_INTERVAL
            await self._sleep(seconds=self._wait(now))

    @property
    def settled(self) -> bool:
        """The link has been up long enough for our retained document to be read back:
        the day's totals are whole (``P/bridge/info`` waits for this)."""
        return self._connected_at is not None and time.monotonic() - self._connected_at >= SETTLE

    def publish_now(self) -> None:
        """Before a clean stop: our latest document, whatever the interval."""
        if self._connected_at is not None and self.usage.unpublished:
            self._publish_own(self._own_due)

    # Publishing -------------------------------------------------------------------------

    def _settled(self, now: float) -> bool:
        if self._connected_at is None:
            if not self.link.connected.is_set():
                return False
            self._connected_at = now
        return now - self._connected_at >= SETTLE

    def _publish_own(self, now: float) -> None:
        if self.usage.unpublished and now >= self._own_due:
            self.link.announce(self.own_topic, instance_document(self.name, self.usage.own))
            self.usage.unpublished = False
            self._own_due = now + PUBLISH_INTERVAL

    def _publish_summary(self, now: float) -> None:
        if self.usage.revision != self._summarised and now >= self._summary_due:
            document = usage_document(self.guardrails, self.local_now())
            self.link.announce(self.summary_topic, json.dumps(document).encode())
            self._summarised = self.usage.revision
            self._summary_due = now + USAGE_INTERVAL

    def _wait(self, now: float) -> float:
        delays = [TICK]
        if self._connected_at is not None and now - self._connected_at < SETTLE:
            delays.append(self._connected_at + SETTLE - now)
        if self.usage.unpublished and self._connected_at is not None:
            delays.append(self._own_due - now)
        return max(min(delays), 0.01)

    async def _sleep(self, *, seconds: float) -> None:
        """Until a change, the first connect, or ``seconds`` passed."""
        waits = [asyncio.ensure_future(self._wake.wait())]
        if self._connected_at is None:
            waits.append(asyncio.ensure_future(self.link.connected.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    # Reading ----------------------------------------------------------------------------

    def _on_document(self, topic: str, payload: bytes, retained: bool, _: bytes | None) -> None:
        name = topic[len(self._instances) : -len("/usage")]
        if not payload:  # cleared by hand: that instance's usage no longer counts
            if name != self.name:
                self.usage.forget_peer(name)
            return
        try:
            book = read_instance_document(name, payload)
        except UsageDocumentError as exc:
            self._warn(name, str(exc))
            return
        if name == self.name:
            self.usage.merge_own(book)
        elif not self.usage.merge_peer(name, book):
            self._warn(name, f"the usage of more than {MAX_INSTANCES} instances is not kept")

    def _warn(self, name: str, problem: str) -> None:
        if name in self._warned or len(self._warned) >= MAX_WARNED:
            return
        self._warned.add(name)
        logger.warning(
            "ignoring the usage document of instance %r: %s (said once per instance)",
            name,
            problem,
        )

"""Spend guardrails in the core: a mixin of :class:`~bridge.protocol.core.BridgeCore`.

A ``send`` of a ``response.create`` and every ``ask`` pass
:class:`~bridge.protocol.guardrails.Guardrails` before anything goes upstream;
every finished response is charged to the day's
:class:`~bridge.protocol.shared_usage.SharedUsage` (the budgets read every
instance's usage there). With no rule configured a
``send`` is not even parsed again. The wall-clock time comes in with the
facts (``wall``, epoch seconds), like the monotonic ``now``.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bridge.protocol.actions import Action
from bridge.protocol.connections import Connection
from bridge.protocol.contract import Ask, Rejection, Send
from bridge.protocol.guardrails import Checked, Guardrails, Refusal, ResponseUsage, local_time
from bridge.protocol.messages import ReplyTo
from bridge.protocol.server_events import RESPONSE_CREATE
from bridge.protocol.sessions import Conversations


class Spending:
    """The guardrails part of the core. What it uses of the core is declared here."""

    _connections: dict[str, Connection]
    conversations: Conversations
    guardrails: Guardrails
    timezone: str | None  # where budget days start at midnight (None: the system's zone)
    _wall: float  # the latest wall-clock time the core was given (epoch seconds)

    if TYPE_CHECKING:  # the core's own

        def _refuse(
            self, connection_id: str, rejection: Rejection, reply_to: ReplyTo | None
        ) -> list[Action]: ...

    @property
    def local_now(self) -> datetime:
        return local_time(self._wall, self.timezone)

    def _guard_send(
        self, command: Send, reply_to: ReplyTo | None
    ) -> tuple[Send, int | None] | list[Action]:
        """The send as it may go (capped) and the cap that lowered it; or its refusal."""
        if not self.guardrails.active or command.event_type != RESPONSE_CREATE:
            return command, None
        request = json.loads(command.event)
        profile = self._connections[command.connection_id].profile
        verdict = self.guardrails.check(command.connection_id, profile, request, self.local_now)
        if isinstance(verdict, Refusal):
            return self._refuse_by_guardrails(command, verdict, reply_to)
        if verdict.request is request:
            return command, None
        return dataclasses.replace(command, event=_compact(verdict.request)), verdict.lowered_to

    def _guard_ask(
        self, command: Ask, profile: str, reply_to: ReplyTo | None
    ) -> Checked | list[Action]:
        """The request fields of this turn as they may go; or its refusal."""
        known = self.conversations.profiles.get(profile)
        fields = known.request if known is not None else {}
        if not self.guardrails.active:
            return Checked(fields)
        verdict = self.guardrails.check(command.connection_id, profile, fields, self.local_now)
        if isinstance(verdict, Refusal):
            return self._refuse_by_guardrails(command, verdict, reply_to)
        return verdict

    def _refuse_by_guardrails(
        self, command: Send | Ask, refusal: Refusal, reply_to: ReplyTo | None
    ) -> list[Action]:
        rejection = Rejection(
            refusal.code,
            refusal.message,
            command.action,
            command.request_id,
            resets_at=refusal.resets_at,
        )
        return self._refuse(command.connection_id, rejection, reply_to)

    def _budget_spent(self, connection: Connection) -> Refusal | None:
        """A budget that covers this connection is used up (checked before each tool
        round: a model that keeps calling tools is not stopped by the ask's check)."""
        return self.guardrails.spent(
            connection.connect.connection_id, connection.profile, self.local_now
        )

    def _charge(self, connection: Connection, usage: ResponseUsage | None) -> None:
        """A response finished: its usage counts against today's budgets."""
        if usage is None:
            return
        book = self.guardrails.usage
        book.roll(self.local_now.date())
        book.charge(connection.connect.connection_id, connection.profile, usage.tokens)


def _compact(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

"""Spend guardrails: a feature of the core (:class:`Spending`).

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

from bridge.protocol.actions import Action
from bridge.protocol.connections import Clock
from bridge.protocol.contract import Ask, Rejection, Send
from bridge.protocol.encoding import compact
from bridge.protocol.guardrails import Checked, Guardrails, Refusal, ResponseUsage, local_time
from bridge.protocol.messages import ReplyTo
from bridge.protocol.replies import Replies
from bridge.protocol.server_events import RESPONSE_CREATE
from bridge.protocol.sessions import Conversations


class Spending:
    """Requests checked against the guardrails, responses charged to the day's usage."""

    def __init__(
        self,
        guardrails: Guardrails,
        conversations: Conversations,
        replies: Replies,
        clock: Clock,
        timezone: str | None,
    ) -> None:
        self.guardrails = guardrails
        self._conversations = conversations
        self._replies = replies
        self._clock = clock
        self.timezone = timezone  # where budget days start at midnight (None: the system's)
        self._doubted: set[str] = set()  # ids whose usage was doubted (logged once per socket)

    @property
    def local_now(self) -> datetime:
        return local_time(self._clock.wall, self.timezone)

    def guard_send(
        self, command: Send, profile: str, reply_to: ReplyTo | None
    ) -> tuple[Send, int | None] | list[Action]:
        """The send as it may go (capped) and the cap that lowered it; or its refusal."""
        if not self.guardrails.active or command.event_type != RESPONSE_CREATE:
            return command, None
        request = json.loads(command.event)
        verdict = self.guardrails.check(command.connection_id, profile, request, self.local_now)
        if isinstance(verdict, Refusal):
            return self._refuse(command, verdict, reply_to)
        if verdict.request is request:
            return command, None
        return dataclasses.replace(command, event=compact(verdict.request)), verdict.lowered_to

    def guard_ask(
        self, command: Ask, profile: str, reply_to: ReplyTo | None
    ) -> Checked | list[Action]:
        """The request fields of this turn as they may go; or its refusal."""
        known = self._conversations.profiles.get(profile)
        fields = known.request if known is not None else {}
        if not self.guardrails.active:
            return Checked(fields)
        verdict = self.guardrails.check(command.connection_id, profile, fields, self.local_now)
        if isinstance(verdict, Refusal):
            return self._refuse(command, verdict, reply_to)
        return verdict

    def spent(self, connection_id: str, profile: str) -> Refusal | None:
        """A budget that covers this connection is used up (checked before each tool
        round: a model that keeps calling tools is not stopped by the ask's check)."""
        return self.guardrails.spent(connection_id, profile, self.local_now)

    def charge(self, connection_id: str, profile: str, usage: ResponseUsage | None) -> None:
        """A response finished: its usage counts against today's budgets."""
        if usage is None:
            return
        book = self.guardrails.usage
        book.roll(self.local_now.date())
        book.charge(connection_id, profile, usage.tokens)

    def doubted(self, connection_id: str, usage: ResponseUsage | None) -> str | None:
        """The problem with a response's usage, the first time one comes on this socket."""
        if usage is None or usage.problem is None or connection_id in self._doubted:
            return None
        self._doubted.add(connection_id)
        tokens = usage.tokens
        return f"{usage.problem}: counted as {tokens.input} input and {tokens.output} output tokens"

    def forget(self, connection_id: str) -> None:
        """The id's socket is gone."""
        self._doubted.discard(connection_id)

    def _refuse(
        self, command: Send | Ask, refusal: Refusal, reply_to: ReplyTo | None
    ) -> list[Action]:
        rejection = Rejection(
            refusal.code,
            refusal.message,
            command.action,
            command.request_id,
            resets_at=refusal.resets_at,
        )
        return self._replies.refuse(command.connection_id, rejection, reply_to)

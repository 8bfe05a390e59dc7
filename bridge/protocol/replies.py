"""What the bridge itself says: acks, errors and notices.

The JSON objects the contract promises (``connect_ack`` ... ``error_event``),
and :class:`Replies`, which turns one into the Publish actions that carry it:
on the id's events topic with the MQTT v5 user properties, a copy to the
command's response topic, and the :data:`~bridge.protocol.messages.Outcome`
the operations side reads instead of the JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.protocol.actions import Action
from bridge.protocol.contract import (
    ASK,
    CLOSE,
    CONNECT,
    DISCONNECTED,
    INVALID_SERVER_EVENT,
    OBJECT_CLIENT_EVENT,
    OBJECT_CONNECTION,
    OBJECT_ERROR,
    SEND,
    Ask,
    Close,
    Command,
    Connect,
    Rejection,
    Send,
    Topics,
    rejection_of,
)
from bridge.protocol.encoding import encode
from bridge.protocol.messages import (
    Acknowledged,
    Outcome,
    Publish,
    Refused,
    ReplyTo,
    UpstreamClosed,
)
from bridge.protocol.server_events import DIRECTION_BRIDGE, user_properties


class Replies:
    """Builds the Publish actions of the bridge's own messages, each with its outcome.

    The message goes to the id's events topic; when the command asked for an
    MQTT v5 response topic, a copy goes there too (without an outcome: the
    operations side counts each answer once).
    """

    def __init__(
        self,
        topics: Topics,
        *,
        url: str,
        qos: int,
        v5: bool,
        profile_urls: Mapping[str, str] | None = None,
    ) -> None:
        self.topics = topics
        self.url = url  # the upstream URL the connect ack shows (redacted)
        # Profiles whose connections go to another endpoint: that endpoint's URL (redacted).
        self.profile_urls = profile_urls or {}
        self.qos = qos
        self.v5 = v5

    def connected(
        self,
        connect: Connect,
        reply_to: ReplyTo | None,
        profile: str | None = None,
        *,
        opened_with: str | None = None,
    ) -> list[Action]:
        """The connect ack; it names the ``profile`` when one was asked for (or by ``ask``),
        and the URL of the endpoint the connection's profile (``opened_with``) names."""
        connection_id = connect.connection_id
        url = self.profile_urls.get(opened_with, self.url) if opened_with else self.url
        ack = connect_ack(connection_id, url, connect.request_id)
        if profile is not None:
            ack["profile"] = profile
        return self.say(connection_id, ack, CONNECT, Acknowledged(connection_id, CONNECT), reply_to)

    def sent(
        self, send: Send, reply_to: ReplyTo | None, lowered_to: int | None = None
    ) -> list[Action]:
        """The send ack; ``lowered_to``: the output cap that lowered its request."""
        connection_id = send.connection_id
        ack = send_ack(connection_id, send.event_type, send.request_id)
        if lowered_to is not None:
            ack["max_output_tokens"] = lowered_to
        return self.say(connection_id, ack, SEND, Acknowledged(connection_id, SEND), reply_to)

    def asked(
        self, ask: Ask, reply_to: ReplyTo | None, lowered_to: int | None = None
    ) -> list[Action]:
        connection_id = ask.connection_id
        ack = send_ack(connection_id, "response.create", ask.request_id)
        ack["action"] = ASK
        if lowered_to is not None:
            ack["max_output_tokens"] = lowered_to
        return self.say(connection_id, ack, ASK, Acknowledged(connection_id, ASK), reply_to)

    def closed(
        self, close: Close, reply_to: ReplyTo | None, *, answered_command: bool
    ) -> list[Action]:
        """The close ack; ``answered_command`` is False for the bridge's own stop."""
        connection_id = close.connection_id
        ack = close_ack(connection_id, close.code, close.reason, close.request_id)
        outcome = UpstreamClosed(
            connection_id, close.code, close.reason, answered_command=answered_command
        )
        return self.say(connection_id, ack, CLOSE, outcome, reply_to)

    def disconnected(self, connection_id: str, code: int, reason: str) -> list[Action]:
        notice = disconnected_notice(connection_id, code, reason)
        outcome = UpstreamClosed(connection_id, code, reason, disconnected=True)
        return self.say(connection_id, notice, DISCONNECTED, outcome, None)

    def refuse(
        self, connection_id: str, rejection: Rejection, reply_to: ReplyTo | None
    ) -> list[Action]:
        """The error event that says ``rejection``."""
        error = rejection_event(connection_id, rejection)
        return self.say(connection_id, error, "error", Refused(connection_id, rejection), reply_to)

    def refuse_command(
        self, command: Command, code: str, message: str, reply_to: ReplyTo | None
    ) -> list[Action]:
        """The error event that refuses ``command``, echoing its action and request id."""
        return self.refuse(command.connection_id, rejection_of(command, code, message), reply_to)

    def invalid_server_event(self, connection_id: str, raw: bytes) -> Publish:
        """The error event that stands for a server frame that cannot be relayed."""
        rejection = Rejection(INVALID_SERVER_EVENT, invalid_frame_message(raw))
        error = rejection_event(connection_id, rejection)
        return self._publish(connection_id, error, "error", Refused(connection_id, rejection))

    def say(
        self,
        connection_id: str,
        message: dict[str, Any],
        event_type: str,
        outcome: Outcome,
        reply_to: ReplyTo | None,
    ) -> list[Action]:
        """``message`` on the id's events topic, and a copy to ``reply_to`` when given."""
        publish = self._publish(connection_id, message, event_type, outcome)
        if reply_to is None:
            return [publish]
        copy = Publish(
            reply_to.topic, publish.payload, self.qos, publish.properties, reply_to.correlation_data
        )
        return [publish, copy]

    def _publish(
        self, connection_id: str, message: dict[str, Any], event_type: str, outcome: Outcome
    ) -> Publish:
        """``message`` on the events topic; ``event_type`` is the user property of that name."""
        properties = user_properties(connection_id, DIRECTION_BRIDGE, event_type) if self.v5 else ()
        topic = self.topics.events(connection_id)
        return Publish(topic, encode(message), self.qos, properties, outcome=outcome)


# The objects, as the README's contract shows them --------------------------------------


def connect_ack(connection_id: str, url: str, request_id: str | None) -> dict[str, Any]:
    return _with_request_id(
        {
            "object": OBJECT_CONNECTION,
            "action": CONNECT,
            "connection_id": connection_id,
            "url": url,
        },
        request_id,
    )


def send_ack(connection_id: str, event_type: str, request_id: str | None) -> dict[str, Any]:
    return _with_request_id(
        {
            "object": OBJECT_CLIENT_EVENT,
            "action": SEND,
            "connection_id": connection_id,
            "event_type": event_type,
        },
        request_id,
    )


def close_ack(connection_id: str, code: int, reason: str, request_id: str | None) -> dict[str, Any]:
    return _with_request_id(
        {
            "object": OBJECT_CONNECTION,
            "action": CLOSE,
            "connection_id": connection_id,
            "code": code,
            "reason": reason,
        },
        request_id,
    )


def disconnected_notice(connection_id: str, code: int, reason: str) -> dict[str, Any]:
    return {
        "object": OBJECT_CONNECTION,
        "action": DISCONNECTED,
        "connection_id": connection_id,
        "code": code,
        "reason": reason,
    }


def error_event(
    connection_id: str,
    code: str,
    message: str,
    *,
    action: str | None,
    request_id: str | None = None,
    status: int | None = None,
    resets_at: str | None = None,
) -> dict[str, Any]:
    """The error event answering one rejected command (``action`` null if unreadable)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if status is not None:
        error["status"] = status
    if resets_at is not None:
        error["resets_at"] = resets_at
    return _with_request_id(
        {"object": OBJECT_ERROR, "action": action, "connection_id": connection_id, "error": error},
        request_id,
    )


def rejection_event(connection_id: str, rejection: Rejection) -> dict[str, Any]:
    """The error event that says ``rejection``."""
    return error_event(
        connection_id,
        rejection.code,
        rejection.message,
        action=rejection.action,
        request_id=rejection.request_id,
        status=rejection.status,
        resets_at=rejection.resets_at,
    )


def invalid_frame_message(raw: bytes) -> str:
    """What ``invalid_server_event`` says of a frame: its first bytes."""
    return f"the upstream sent a frame that is not a JSON object with a type: {raw[:120]!r}"


def _with_request_id(message: dict[str, Any], request_id: str | None) -> dict[str, Any]:
    if request_id is not None:
        message["request_id"] = request_id
    return message

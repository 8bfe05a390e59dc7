"""Conversations, without I/O: the request of a turn, memory, transcript bound, expiry."""

from __future__ import annotations

import json
from typing import Any

from bridge.protocol import sessions
from bridge.protocol.contract import Ask
from bridge.protocol.sessions import Conversations, ProfileConfig, SessionsConfig

PROFILES = {"default": ProfileConfig(request={"model": "m", "store": False})}


def book(**fields: Any) -> Conversations:
    return Conversations(PROFILES, SessionsConfig(**fields))


def turn(conversations: Conversations, text: str, now: float = 0.0, **fields: Any) -> Any:
    return json.loads(conversations.request(Ask("c1", text, **fields), "default", now))


def complete(conversations: Conversations, response_id: str, answer: str) -> None:
    output = [{"type": "message", "content": [{"type": "output_text", "text": answer}]}]
    conversations.completed("c1", {"id": response_id, "output": output}, 0.0)


def test_the_first_turn_is_the_profile_and_the_input() -> None:
    assert turn(book(), "Hi") == {
        "type": "response.create",
        "model": "m",
        "store": False,
        "input": [{"role": "user", "content": "Hi"}],
    }


def test_same_socket_continues_new_socket_replays() -> None:
    conversations = book()
    turn(conversations, "Hi")
    complete(conversations, "resp_1", "Hello!")
    assert turn(conversations, "More")["previous_response_id"] == "resp_1"
    complete(conversations, "resp_2", "Sure.")
    conversations.socket_ended("c1")
    replay = turn(conversations, "Again")
    assert "previous_response_id" not in replay
    assert replay["input"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "More"},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "Again"},
    ]


def test_a_stored_profile_continues_across_sockets() -> None:
    stored = Conversations({"default": ProfileConfig(request={"store": True})}, SessionsConfig())
    turn(stored, "Hi")
    complete(stored, "resp_1", "Hello!")
    stored.socket_ended("c1")
    assert turn(stored, "More")["previous_response_id"] == "resp_1"


def test_a_failed_turn_leaves_no_transcript_entry() -> None:
    conversations = book()
    turn(conversations, "Hi")
    conversations.ended("c1")
    conversations.socket_ended("c1")
    assert turn(conversations, "Again")["input"] == [{"role": "user", "content": "Again"}]


def test_the_transcript_keeps_the_newest_turns_within_its_bound() -> None:
    conversations = book(max_transcript_bytes=1024)
    for number in range(20):
        turn(conversations, f"question {number} " + "x" * 100)
        complete(conversations, f"resp_{number}", f"answer {number}")
    conversations.socket_ended("c1")
    replay = turn(conversations, "last")["input"]
    kept = json.dumps(replay[:-1], separators=(",", ":"))
    assert len(kept) <= 1024
    assert replay[-2] == {"role": "assistant", "content": "answer 19"}
    assert replay[0]["content"].startswith("question ")
    assert not any("question 0 " in item["content"] for item in replay)


def test_conversations_expire_and_are_bounded(monkeypatch: Any) -> None:
    conversations = book(conversation_ttl=60)
    turn(conversations, "Hi", now=0.0)
    complete(conversations, "resp_1", "Hello!")
    conversations.expire(59.0)
    assert "c1" in conversations
    conversations.expire(61.0)
    assert "c1" not in conversations
    monkeypatch.setattr(sessions, "MAX_CONVERSATIONS", 3)
    for number in range(10):
        conversations.request(Ask(f"id{number}", "Hi"), "default", 0.0)
    assert len(conversations) == 3


def test_the_transcript_bound_counts_utf8_bytes() -> None:
    """Emoji are 4 bytes each: the bound holds for what a replay sends, not for characters."""
    conversations = book(max_transcript_bytes=4096)
    for number in range(40):
        turn(conversations, f"{number} " + "😀" * 200)
        complete(conversations, f"resp_{number}", "🎉" * 200)
    conversations.socket_ended("c1")
    request = conversations.request(Ask("c1", "last"), "default", 0.0)
    replay = json.loads(request)["input"]
    kept = json.dumps(replay[:-1], ensure_ascii=False, separators=(",", ":")).encode()
    assert len(kept) <= 4096
    assert replay[-2] == {"role": "assistant", "content": "🎉" * 200}
    conversation = conversations.get("c1")
    assert conversation is not None
    held = sum(len(kept_turn.json) for kept_turn in conversation.transcript)
    assert held == conversation.transcript_bytes <= 4096


def test_client_tool_calls_are_replayed_with_the_outputs_the_next_ask_brings() -> None:
    conversations = book()
    turn(conversations, "Turn on the kitchen light")
    call = {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "HassTurnOn",
        "arguments": '{"name":"Kitchen"}',
        "status": "completed",
    }
    conversations.completed("c1", {"id": "resp_1", "output": [call]}, 0.0)
    output = {"type": "function_call_output", "call_id": "call_1", "output": "done"}
    assert turn(conversations, [output])["previous_response_id"] == "resp_1"  # type: ignore[arg-type]
    complete(conversations, "resp_2", "The light is on.")
    conversations.socket_ended("c1")
    assert turn(conversations, "Thanks")["input"] == [
        {"role": "user", "content": "Turn on the kitchen light"},
        {k: call[k] for k in ("type", "call_id", "name", "arguments")},
        output,
        {"role": "assistant", "content": "The light is on."},
        {"role": "user", "content": "Thanks"},
    ]

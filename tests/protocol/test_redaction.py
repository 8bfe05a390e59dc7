"""The Redactor: secrets scrubbed by value, raw and in every encoding the bridge may emit."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bridge.protocol.redaction import (
    MIN_ENCODED_LENGTH,
    REDACTED,
    Redactor,
    base64_cores,
    encodings,
)

SECRET = "pw-canary-Zx9Q7mK2vL/+é"


def basic(user: str, secret: str, *, urlsafe: bool = False) -> str:
    """``base64(user:secret)``, as HTTP Basic auth sends it."""
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return encode(f"{user}:{secret}".encode()).decode()


def encoded_forms(secret: str, user: str) -> list[str]:
    """Every form a secret can take in what the bridge logs, prints or publishes."""
    return [
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        base64.b64encode(secret.encode()).decode(),
        basic(user, secret),
        basic(user, secret, urlsafe=True),
    ]


@pytest.mark.parametrize("user", ["", "u", "ab", "abc", "bridge-user", "ü"])
@pytest.mark.parametrize("urlsafe", [False, True])
def test_basic_auth_is_caught_whatever_the_user_name(user: str, urlsafe: bool) -> None:
    """base64("user:" + secret) loses the secret at any alignment, in both alphabets."""
    line = f"> Authorization: Basic {basic(user, SECRET, urlsafe=urlsafe)}"
    cleaned = Redactor([SECRET]).redact(line)
    assert basic(user, SECRET, urlsafe=urlsafe) not in cleaned
    assert REDACTED in cleaned
    assert cleaned.startswith("> Authorization: Basic ")


@pytest.mark.parametrize("index", range(8))
def test_every_encoding_of_a_secret_is_replaced(index: int) -> None:
    """Raw, percent-encoded (both ways), JSON-escaped (both ways), base64: all go."""
    form = encoded_forms(SECRET, "user")[index]
    cleaned = Redactor([SECRET]).redact(f"before {form} after")
    assert form not in cleaned
    assert cleaned.startswith("before ")
    assert cleaned.endswith(" after")


def test_a_short_secret_is_replaced_raw_only() -> None:
    """Below MIN_ENCODED_LENGTH only the raw value goes: encodings of it would shred text."""
    redactor = Redactor(["a b"])
    assert len("a b") < MIN_ENCODED_LENGTH
    assert redactor.redact("x a b y") == f"x {REDACTED} y"
    assert redactor.redact("a%20b YSBi") == "a%20b YSBi"
    assert encodings("a b") == {"a b"}


def test_key_shapes_are_removed_unless_asked_not_to() -> None:
    """Anything shaped like an OpenAI key goes too, also partly masked by a server."""
    text = "Incorrect API key provided: sk-abc***wxyz; task-abcdefgh stays"
    assert Redactor().redact(text) == f"Incorrect API key provided: {REDACTED}; task-abcdefgh stays"
    assert Redactor(key_shapes=False).redact(text) == text


def test_the_marker_never_spells_a_secret_again() -> None:
    """Text before a secret plus the start of REDACTED can spell the secret: it goes too."""
    secret = "abcdefgR"  # ends as REDACTED begins
    cleaned = Redactor([secret]).redact("abcdefg" * 3 + secret)
    assert secret not in cleaned


def test_longest_form_wins_so_json_stays_valid() -> None:
    """A secret ending in a backslash: its JSON form is replaced whole, not its raw prefix."""
    secret = "trailing-backslash\\"
    line = json.dumps({"message": f"key {secret}"})
    cleaned = Redactor([secret]).redact(line)
    assert json.loads(cleaned) == {"message": f"key {REDACTED}"}


def test_bytes_and_json_data() -> None:
    """redact_bytes works on UTF-8 without decoding; redact_json on every string of a document."""
    redactor = Redactor([SECRET])
    payload = json.dumps({"url": f"wss://h/?foo={quote(SECRET, safe='')}", "n": 1}).encode()
    assert SECRET.encode() not in redactor.redact_bytes(SECRET.encode())
    assert quote(SECRET, safe="").encode() not in redactor.redact_bytes(payload)
    document = {"a": [SECRET, 1, None], SECRET: {"b": f"x{SECRET}"}}
    assert redactor.redact_json(document) == {
        "a": [REDACTED, 1, None],
        REDACTED: {"b": f"x{REDACTED}"},
    }


def test_a_redactor_is_immutable_and_never_shows_its_secrets() -> None:
    """No attribute can be set; repr counts the secrets; bool says whether it looks for any."""
    redactor = Redactor([SECRET, SECRET, ""])
    with pytest.raises(AttributeError):
        redactor.secrets = ()
    assert SECRET not in repr(redactor)
    assert repr(redactor) == "Redactor(1 secrets)"
    assert redactor
    assert not Redactor(key_shapes=False)
    assert Redactor(["x"], key_shapes=False)
    assert redactor.found(f"a {SECRET}")
    assert not redactor.found("nothing here")
    more = redactor.extended(["another-secret"])
    assert more.redact(f"{SECRET} another-secret") == f"{REDACTED} {REDACTED}"
    assert redactor.redact("another-secret") == "another-secret"


def test_base64_cores_are_the_fully_determined_characters() -> None:
    """9 bytes, 72 bits: 12 characters at alignment 0; at 1 and 2 the first and last
    characters also hold bits of the neighbours, 11 are left."""
    cores = base64_cores(b"123456789")
    assert base64.b64encode(b"123456789").decode() in cores
    assert base64.b64encode(b"\0" + b"123456789").decode()[2:13] in cores
    assert {len(core) for core in cores} == {12, 11}


# Secrets of 8 to 64 characters, any Unicode (no lone surrogates: they come only
# from a broken environment); user names without the colon Basic auth reserves.
secrets = st.text(min_size=8, max_size=64)
users = st.text(max_size=12).filter(lambda user: ":" not in user)


@given(secret=secrets, user=users, before=st.text(max_size=40), after=st.text(max_size=40))
def test_no_encoding_of_a_secret_survives(secret: str, user: str, before: str, after: str) -> None:
    """Whatever the secret and the text around it, none of its forms is left."""
    redactor = Redactor([secret])
    for form in encoded_forms(secret, user):
        cleaned = redactor.redact(before + form + after)
        assert form not in cleaned
        assert secret not in cleaned
        assert redactor.redact_bytes((before + form + after).encode()).find(form.encode()) < 0


@given(secret=secrets, text=st.text(max_size=200))
def test_text_without_a_secret_is_unchanged(secret: str, text: str) -> None:
    """Redaction touches nothing but the secret's forms."""
    assume(not any(form in text for form in encodings(secret)))
    redactor = Redactor([secret], key_shapes=False)
    assert redactor.redact(text) == text
    assert redactor.redact_bytes(text.encode()) == text.encode()


@given(secret=secrets, text=st.text(max_size=80))
def test_bytes_and_text_agree(secret: str, text: str) -> None:
    """redact_bytes of UTF-8 is redact of the text, encoded."""
    redactor = Redactor([secret], key_shapes=False)
    sample = text + secret + text
    assert redactor.redact_bytes(sample.encode()) == redactor.redact(sample).encode()

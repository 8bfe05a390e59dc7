"""Text chunks for small devices: never lose, reorder or split a character, stay in the limit."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.protocol.text_chunks import MAX_HELD_BYTES, TextChunker, utf8_prefix

# Text of every width: ASCII words, accented Latin, CJK, emoji (4 bytes), and the
# sentence ends of both scripts.
_PIECES = st.sampled_from(
    [
        "Hello",
        " world",
        ".",
        " ",
        "é",
        "ß",
        "你好",
        "世界",
        "。",
        "🎉",
        "👍🏽",
        "!",
        "\n",
        "3.14",
        "?",
    ]
)
_DELTAS = st.lists(st.lists(_PIECES, max_size=6).map("".join), max_size=40)


def run(chunker: TextChunker, deltas: list[str], flush_every: int = 3) -> list[str]:
    """Feed ``deltas``; flush as a timer would every ``flush_every`` deltas; finish."""
    chunks: list[str] = []
    for number, delta in enumerate(deltas, 1):
        chunks += chunker.add(delta)
        if number % flush_every == 0:
            chunks += chunker.flush()
    return chunks + chunker.finish()


@given(
    _DELTAS, st.sampled_from([16, 17, 18, 19, 20, 64, 200]), st.sampled_from(["word", "sentence"])
)
def test_chunks_are_the_text_within_the_limit(deltas: list[str], limit: int, split: str) -> None:
    chunker = TextChunker(limit, "word" if split == "word" else "sentence")
    chunks = run(chunker, deltas)
    assert "".join(chunks) == "".join(deltas)
    assert all(chunks), "no empty chunk is published"
    for chunk in chunks:
        data = chunk.encode()  # a str: never half a character
        assert len(data) <= limit


@given(_DELTAS)
def test_no_limit_keeps_whole_text(deltas: list[str]) -> None:
    chunks = run(TextChunker(0), deltas)
    assert "".join(chunks) == "".join(deltas)


def test_word_mode_ends_chunks_after_a_word() -> None:
    chunker = TextChunker(0)
    assert chunker.add("Hello") == []
    assert chunker.flush() == []  # a word may go on: it waits
    chunker.add(", how are")
    assert chunker.flush() == ["Hello, how "]
    assert chunker.finish() == ["are"]


def test_the_limit_cuts_at_the_last_word_that_fits() -> None:
    chunker = TextChunker(16)
    assert chunker.add("The quick brown fox jumps") == ["The quick brown "]
    assert chunker.finish() == ["fox jumps"]


def test_a_word_longer_than_the_limit_is_cut_between_characters() -> None:
    chunker = TextChunker(16)
    chunks = chunker.add("🎉" * 10)  # 40 bytes, no boundary
    assert chunks == ["🎉🎉🎉🎉", "🎉🎉🎉🎉"]
    assert chunker.finish() == ["🎉🎉"]


def test_cjk_needs_no_space_to_end_a_word() -> None:
    chunker = TextChunker(0)
    chunker.add("你好世界")
    assert chunker.flush() == ["你好世界"]


def test_sentence_mode_waits_for_the_end_of_a_sentence() -> None:
    chunker = TextChunker(0, "sentence")
    chunker.add("Pi is 3")
    chunker.add(".")
    assert chunker.flush() == []  # "3." may be a decimal point
    chunker.add("14 or so. Next")
    assert chunker.flush() == ["Pi is 3.14 or so. "]
    chunker.add("\uff01好\u3002")  # full-width exclamation mark and full stop
    assert chunker.flush() == ["Next\uff01好\u3002"]


def test_sentence_mode_falls_back_on_words_at_the_limit() -> None:
    chunker = TextChunker(20, "sentence")
    assert chunker.add("one two three four five six") == ["one two three four "]


def test_held_text_without_a_limit_is_bounded() -> None:
    chunker = TextChunker(0, "sentence")
    chunks = chunker.add("a" * (MAX_HELD_BYTES + 10))
    assert [len(chunk) for chunk in chunks] == [MAX_HELD_BYTES]


def test_utf8_prefix_never_splits_a_character() -> None:
    assert utf8_prefix("aé", 2) == "a"
    assert utf8_prefix("🎉x", 3) == ""
    assert utf8_prefix("abc", 10) == "abc"

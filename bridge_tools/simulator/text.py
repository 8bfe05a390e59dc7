"""Deterministic answer text, tokens and token counts for the simulator.

Nothing here does I/O or reads the clock. The same prompt, seed and turn kind always
give the same answer, so tests can assert on it and demos are reproducible.

The "tokens" are a GPT-2-style regex split (words with their leading space, runs of
digits, runs of punctuation, whitespace). They are not real BPE tokens, but they give
realistic delta sizes and plausible usage figures.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

# A GPT-2-style pre-tokenizer; the alternatives cover every character, so joining the
# pieces gives the text back unchanged.
_TOKEN_RE = re.compile(r"'(?:s|t|re|ve|m|ll|d)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+")
# Fault markers such as "[[fault:close_1011]]" are instructions to the simulator, not
# part of the question.
MARKER_RE = re.compile(r"\[\[[^\[\]]*\]\]")
_WORD_RE = re.compile("[\\w'\u2019-]+")

# Words that frame a question without carrying its topic.
_SCAFFOLD = frozenset(
    [
        "please",
        "can",
        "could",
        "would",
        "will",
        "should",
        "shall",
        "may",
        "might",
        "you",
        "tell",
        "me",
        "explain",
        "describe",
        "show",
        "give",
        "write",
        "summarize",
        "summarise",
        "define",
        "what",
        "what's",
        "whats",
        "who",
        "who's",
        "why",
        "how",
        "when",
        "where",
        "which",
        "is",
        "are",
        "was",
        "were",
        "do",
        "does",
        "did",
        "i",
        "we",
        "us",
        "let",
        "let's",
        "lets",
        "know",
        "about",
        "to",
        "quickly",
        "briefly",
        "short",
        "in",
        "a",
        "little",
        "bit",
        "more",
        "detail",
        "some",
        "hey",
        "ok",
        "okay",
        "so",
    ]
)
_PRONOUNS = {"my": "your", "i": "you", "me": "you", "our": "your", "we": "you", "mine": "yours"}
_GREETINGS = frozenset(
    ["hello", "hi", "hey", "hallo", "hola", "bonjour", "greetings", "howdy", "yo"]
)
_MAX_TOPIC_WORDS = 8
_FALLBACK_TOPIC = "your request"

_OPENERS: dict[str, tuple[str, ...]] = {
    "how": (
        "To {topic}, start with the simplest step and check the result before moving on.",
        "The usual way to {topic} is to work through it in a few small steps.",
        "If you want to {topic}, begin by getting the basics in place.",
    ),
    "why": (
        "Good question about {topic}: the short answer comes down to cause and effect.",
        "There is a simple explanation for {topic} once you look at the context.",
        "The reasons behind {topic} are easier to see with a concrete example.",
    ),
    "what": (
        "Here is a short overview of {topic}.",
        "Put simply, {topic} comes down to a few key points.",
        "{Topic} is easiest to understand through a few key points.",
    ),
    "yesno": (
        "In most cases, yes, although it depends on the details of {topic}.",
        "Usually it does, but the answer for {topic} depends on the context.",
        "It can, and the common cases of {topic} are easy to check.",
    ),
    "other": (
        "Here is a short note on {topic}.",
        "Sure, here are a few thoughts on {topic}.",
        "Good question about {topic}.",
    ),
}
_BODY = (
    "The main thing to keep in mind about {topic} is that a few basic factors matter most.",
    "A good first step is to look at a simple, concrete example.",
    "Most of the details follow naturally once the core idea is clear.",
    "It also helps to compare a couple of options before settling on one.",
    "In practice, small and careful changes tend to work better than big ones.",
    "If something looks off, going back to the basics usually reveals why.",
    "Writing down the steps often makes the whole thing easier to follow.",
    "There is no single right answer, but the common approach works well in most cases.",
    "Checking the result after each step saves time later.",
    "Reliable sources and official documentation are the best places to confirm details.",
)
_CLOSERS = (
    "Let me know if you want more detail on any part of this.",
    "I can go deeper into {topic} if that would help.",
    "Feel free to ask a follow-up question.",
    "I hope this gives you a useful starting point.",
)
_FOLLOW_UPS = (
    "Building on what we discussed, ",
    "Following up on that, ",
    "To continue from the previous answer, ",
)
_GREETING_REPLIES = (
    "Hello! How can I help you today?",
    "Hi there! What would you like to talk about?",
    "Hello! Ask me anything and I will do my best to help.",
)


# "Reply with exactly: <text>" in the latest user message scripts the answer (a client's
# structured-output parsing is tested with an answer it chose, good or bad).
_VERBATIM_RE = re.compile(r"\breply with exactly:\s*", re.IGNORECASE)


def scripted_reply(prompt: str) -> str | None:
    """The text after ``Reply with exactly:`` in the prompt, to its end; None without it."""
    match = _VERBATIM_RE.search(prompt)
    if match is None:
        return None
    return prompt[match.end() :].strip() or None


def tokenize(text: str) -> list[str]:
    """Split text into token-like pieces whose concatenation is the text."""
    return _TOKEN_RE.findall(text)


def content_text(content: object) -> str:
    """The text of a message's ``content``: a string, or the ``text`` of its parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = [part.get("text") for part in content if isinstance(part, dict)]
    return "\n".join(part for part in parts if isinstance(part, str))


def count_tokens(text: str) -> int:
    """The number of token-like pieces in text."""
    return len(tokenize(text))


def strip_markers(text: str) -> str:
    """Remove simulator markers ("[[...]]") and collapse the whitespace they leave."""
    return " ".join(MARKER_RE.sub(" ", text).split())


def digest(*parts: object) -> int:
    """A stable integer from the parts (sha256), for deterministic choices."""
    data = "\x1f".join(str(part) for part in parts).encode()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


def _pick(options: Sequence[str], *key: object) -> str:
    return options[digest(*key) % len(options)]


def question_kind(prompt: str) -> str:
    """Classify a prompt as "greeting", "say", "how", "why", "what", "yesno" or "other"."""
    words: list[str] = [word.lower() for word in _WORD_RE.findall(prompt)]
    if not words:
        return "other"
    if words[0] in _GREETINGS and len(words) <= 3:
        return "greeting"
    first = words[0]
    if first in ("say", "greet") and len(words) > 1:
        return "say"
    if first in ("how", "why"):
        return first
    if first in ("what", "what's", "whats", "who", "who's", "which", "define", "explain"):
        return "what"
    if first in ("is", "are", "can", "could", "does", "do", "should", "will", "would", "may"):
        return "yesno"
    return "other"


def extract_topic(prompt: str) -> str:
    """The phrase a prompt is about, e.g. "the capital of France".

    Leading question words are dropped, first-person pronouns are turned into second
    person, and the result is cut to a few words.
    """
    clause = re.split(r"[?.!\n]", strip_markers(prompt), maxsplit=1)[0]
    words = _WORD_RE.findall(clause)
    start = 0
    while start < len(words) and words[start].lower() in _SCAFFOLD:
        start += 1
    topic_words = [_PRONOUNS.get(word.lower(), word) for word in words[start:]]
    topic_words = topic_words[:_MAX_TOPIC_WORDS]
    if not topic_words:
        return _FALLBACK_TOPIC
    topic = " ".join(topic_words)
    # Only the first word of the sentence is capitalised for grammar's sake.
    return _lower_first(topic) if start == 0 else topic


def _lower_first(text: str) -> str:
    """Lower-case the first letter unless the first word looks like an acronym or name."""
    first = text.split(" ", 1)[0]
    if len(first) > 1 and any(char.isupper() for char in first[1:]):
        return text
    return text[:1].lower() + text[1:]


def generate_answer(prompt: str, seed: int, *, follow_up: bool = False) -> str:
    """A short, plausible answer to prompt; the same inputs give the same text.

    Args:
        prompt: The user's latest message (markers are ignored).
        seed: Varies the wording; equal seeds give equal answers.
        follow_up: Whether the answer continues an earlier turn.
    """
    clean = strip_markers(prompt)
    kind = question_kind(clean)
    if kind == "greeting":
        return _pick(_GREETING_REPLIES, seed, clean)
    if kind == "say":
        return _say(clean, seed)
    topic = extract_topic(clean)
    fill = {"topic": topic, "Topic": topic[:1].upper() + topic[1:]}
    opener = _pick(_OPENERS[kind], seed, clean, "opener").format(**fill)
    if follow_up:
        prefix = _pick(_FOLLOW_UPS, seed, clean, "follow")
        opener = prefix + _lower_first(opener)
    first = digest(seed, clean, "body") % len(_BODY)
    step = 1 + digest(seed, clean, "step") % (len(_BODY) - 1)
    body = [_BODY[first], _BODY[(first + step) % len(_BODY)]]
    closer = _pick(_CLOSERS, seed, clean, "closer")
    return " ".join(
        [opener, *(sentence.format(**fill) for sentence in body), closer.format(**fill)]
    )


# "Say hello from X in one sentence": the phrase to say, without the length instruction.
_SAY_RE = re.compile(
    r"^\s*(?:say|greet)\s+(?P<phrase>.+?)"
    r"(?:\s+(?:in|with)\s+(?:one|a|\d+)\s+\w+)?\s*[.!?]*\s*$",
    re.IGNORECASE,
)
_SAY_TAILS = (
    "This reply streams in token by token, just as the real API sends it.",
    "Every word of this answer arrives as its own delta event.",
    "Nice to meet you, one streamed token at a time.",
)


def _say(prompt: str, seed: int) -> str:
    """Do what a "say ..." prompt asks: say the phrase, then one more sentence."""
    match = _SAY_RE.match(prompt.split("\n", 1)[0])
    phrase = match.group("phrase") if match else prompt
    phrase = phrase[:1].upper() + phrase[1:]
    return f"{phrase}! {_pick(_SAY_TAILS, seed, prompt, 'say')}"


def long_text(prompt: str, seed: int, min_chars: int) -> str:
    """Answers to prompt repeated (with varied seeds) until at least min_chars long."""
    paragraphs: list[str] = []
    size = 0
    index = 0
    while size < min_chars:
        paragraph = generate_answer(prompt, seed + index)
        paragraphs.append(paragraph)
        size += len(paragraph) + 2
        index += 1
    return "\n\n".join(paragraphs)


def chunk_tokens(tokens: Sequence[str], max_chars: int) -> list[str]:
    """Group consecutive tokens into pieces of at most max_chars (one token may exceed)."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for token in tokens:
        if current and size + len(token) > max_chars:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(token)
        size += len(token)
    if current:
        chunks.append("".join(current))
    return chunks

"""A tool call's result as text for the model (the SDK's types read here, nowhere else)."""

from __future__ import annotations

from mcp import types

from bridge.protocol.encoding import compact


def result_text(result: types.CallToolResult) -> str:
    """The text of a result's content blocks, one per line; a block that is not text is
    named (an image, a resource); no text at all: its structured content as JSON."""
    parts = [_block_text(block) for block in result.content]
    texts = any(isinstance(block, types.TextContent) for block in result.content)
    if not texts and result.structured_content is not None:
        parts.insert(0, compact(result.structured_content))
    return "\n".join(parts)


def _block_text(block: types.ContentBlock) -> str:
    match block:
        case types.TextContent():
            return block.text
        case types.ImageContent() | types.AudioContent():
            return f"[{block.type}: {block.mime_type}]"
        case types.ResourceLink():
            return f"[resource: {block.uri}]"
        case types.EmbeddedResource():
            resource = block.resource
            if isinstance(resource, types.TextResourceContents):
                return resource.text
            return f"[resource: {resource.uri} ({resource.mime_type or 'binary'})]"
    return f"[{type(block).__name__}]"  # pragma: no cover (a block type of a later SDK)

"""The wiring of each part of the daemon: one small builder per part, from the settings.

:class:`~bridge.daemon.service.Service` is the one supervisor: it builds its
parts here, in order (the core, the broker link, usage sharing, the
membership; the cluster when it is enabled), hands each the callbacks it needs, and owns their
tasks and timers. A part that is not configured is not built (the cluster) or
costs nothing on the relay path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from bridge.config.endpoints import NamedEndpoint
from bridge.config.settings import Config, Settings, instance_name
from bridge.daemon.membership import MembershipAgent
from bridge.daemon.timers import Timers
from bridge.daemon.usage_sharing import UsageSharing
from bridge.daemon.usage_store import UsageStore
from bridge.mqtt.link import Inbound, MqttLink
from bridge.ops.observer import Observer
from bridge.protocol.contract import Topics
from bridge.protocol.core import BridgeCore
from bridge.protocol.guardrails import local_time
from bridge.protocol.response_topics import ResponseTopicPolicy
from bridge.protocol.shared_usage import SharedUsage
from bridge.protocol.tools import ToolConfig
from bridge.protocol.usage_documents import MAX_DOCUMENT_BYTES
from bridge.upstream.http_connection import http_urls

# Room in an inbound packet for its topic and properties besides the payload.
if TYPE_CHECKING:
    from bridge.mcp.servers import McpServers

PACKET_OVERHEAD_BYTES: Final = 256 * 1024


def response_topics(config: Config, topics: Topics) -> ResponseTopicPolicy:
    """Where an MQTT v5 command's reply may go: ``mqtt.response_topics``, never under the
    prefix or Home Assistant's discovery prefix."""
    return ResponseTopicPolicy(
        allowed=config.mqtt.response_topics,
        refused=(f"{topics.prefix}/#", f"{config.homeassistant.prefix}/#"),
    )


def core(settings: Settings, topics: Topics, usage: SharedUsage | None) -> BridgeCore:
    """The core: every connection id's state, facts in, actions out."""
    config = settings.config
    return BridgeCore(
        topics,
        url=settings.endpoint.display_url,
        qos=config.mqtt.qos,
        limits=config.limits,
        v5=config.mqtt.protocol == "5",
        redactor=settings.redactor,
        sessions=config.sessions,
        profiles=config.profiles,
        assistants=config.homeassistant.assistants,
        usage=usage,
        tools=config.tools,
        response_topics=response_topics(config, topics),
        mcp_servers=config.mcp_servers,
        profile_urls={  # a profile on a named endpoint: the connect ack shows its URL
            name: shown_url(named)
            for name, profile in config.profiles.items()
            if (named := settings.endpoints.get(profile.endpoint or "")) is not None
        },
    )


def mcp_servers(
    settings: Settings, core: BridgeCore, on_result: Callable[[int, str, bool], None]
) -> McpServers | None:
    """The links to the house's MCP servers (None: none is configured); what they list and
    when they are down goes to the core, as do the results of calls."""
    if not settings.config.mcp_servers:
        return None
    # The MCP SDK (half a second and some 20 MB to import) only where servers are configured.
    from bridge.mcp.servers import McpServers

    return McpServers(
        settings.config.mcp_servers,
        settings.mcp_tokens,
        settings.redactor,
        listed=core.mcp_listed,
        down=core.mcp_down,
        result=on_result,
    )


def shown_url(named: NamedEndpoint) -> str:
    """The URL a connect ack shows for a named endpoint (redacted): the POST URL over HTTP,
    the WebSocket URL otherwise (``auto`` decides only at the first connection)."""
    if named.config.transport == "http":
        return http_urls(named.endpoint).display
    return named.endpoint.display_url


def max_packet_bytes(config: Config) -> int:
    """The largest packet the broker may send the bridge (MQTT 5): commands up to twice the
    limit still get `payload_too_large`, and other instances' usage documents fit."""
    return max(2 * config.limits.max_command_bytes, MAX_DOCUMENT_BYTES) + PACKET_OVERHEAD_BYTES


def link(
    settings: Settings,
    topics: Topics,
    on_inbound: Callable[[Inbound], None],
    observer: Observer,
) -> MqttLink:
    """The broker link: commands in, everything the bridge says out."""
    config = settings.config
    return MqttLink(
        config.mqtt,
        topics,
        on_inbound,
        password=settings.mqtt_password.value if settings.mqtt_password else None,
        tls=settings.mqtt_tls,
        # Commands up to twice the limit still get `payload_too_large` (and other
        # instances' usage documents fit); the broker drops larger ones (MQTT v5).
        max_packet_bytes=max_packet_bytes(config),
        on_published=observer.publish_latency,
    )


def listen_for_tool_replies(
    link: MqttLink,
    tools: Sequence[ToolConfig],
    on_reply: Callable[[str, bytes, bool, bytes | None], None],
) -> None:
    """Replies to tool calls (MQTT v5 correlation, or the first) reach ``on_reply``."""
    for tool in tools:
        if tool.reply is not None:
            link.listen_for_replies(tool.reply.topic, on_reply)


def usage_sharing(
    core: BridgeCore,
    store: UsageStore,
    link: MqttLink,
    topics: Topics,
    wall_clock: Callable[[], float] = time.time,
) -> UsageSharing:
    """The day's usage of every instance on the prefix, as budgets count it."""
    return UsageSharing(
        core.guardrails,
        store,
        link,
        topics,
        lambda: local_time(wall_clock(), core.spending.timezone),
    )


def membership(
    config: Config,
    topics: Topics,
    link: MqttLink,
    *,
    handle: Callable[[Inbound], None],
    busy: Callable[[Inbound], None],
    observer: Observer,
    timers: Timers,
) -> MembershipAgent:
    """Every bridge says who it is on its prefix and serves only after a roll call found
    no other bridge it cannot share the prefix with (README: Several instances)."""
    return MembershipAgent(
        instance_name(config),
        topics,
        link,
        standalone=not config.cluster.enabled,
        roll_call=config.cluster.roll_call,
        carry_out=handle,
        busy=busy,
        on_error=observer.error,
        timers=timers,
    )

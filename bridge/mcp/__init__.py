"""The MCP side: the bridge as a client of the house's MCP servers (``mcp_servers``).

An adapter like ``mqtt/`` and ``upstream/``: the only place that speaks to MCP
servers (the official ``mcp`` SDK); the core asks for calls as actions and is
told the servers' tools and the calls' results as facts.
"""

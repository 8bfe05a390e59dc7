"""Configuration, the bottom of the daemon's layers: what the bridge is configured with.

- :mod:`~bridge.config.sections` and :mod:`~bridge.config.cluster`: the config
  file's sections as frozen pydantic models (the feature sections ``limits``,
  ``sessions``, ``profiles`` and ``tools`` are defined with their features in
  :mod:`bridge.protocol`);
- :mod:`~bridge.config.settings`: YAML → :class:`~bridge.config.settings.Config`,
  validated once, resolved into :class:`~bridge.config.settings.Settings`;
- :mod:`~bridge.config.sources`: environment overrides, where each value came from;
- :mod:`~bridge.config.secrets` and :mod:`~bridge.config.tls`: where each secret
  comes from, the broker's TLS context;
- :mod:`~bridge.config.endpoint`: the upstream WebSocket URL and headers;
- :mod:`~bridge.config.dump` and :mod:`~bridge.config.inert`: what ``check-config``
  prints and warns about.

Nothing here imports the adapters (``mqtt``, ``upstream``, ``cluster``), the
daemon or the operations side (``[tool.importlinter]`` in pyproject.toml).
"""

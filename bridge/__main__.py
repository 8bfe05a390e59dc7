"""`python -m bridge` does what the `openai-mqtt-bridge` console script does."""

from bridge.cli import main

raise SystemExit(main())

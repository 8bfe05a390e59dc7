"""The manual's machinery: generated references, and the examples the tests check."""

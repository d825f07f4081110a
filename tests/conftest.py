"""Fixtures live in tests/fixtures/; each starts a real service when none is reachable."""

pytest_plugins = ["tests.fixtures.postgres", "tests.fixtures.mqtt"]

"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_upstream import FakeUpstream


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    """A started loopback fake of the Qwen API, stopped after the test."""
    with FakeUpstream() as fake:
        yield fake

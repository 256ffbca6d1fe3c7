"""Fixtures for the remote-LLM client tests: a real gboost server (uvicorn on
127.0.0.1, free port, background thread) over the fake bigram backend of
tests/server."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from _fake_backend import server_factory  # noqa: E402


@pytest.fixture
def make_server():
    """``make_server(backend=None, fault=None, **create_app_kwargs) -> BackgroundServer``."""
    with server_factory() as make:
        yield make


@pytest.fixture
def free_port():
    """A port nobody listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

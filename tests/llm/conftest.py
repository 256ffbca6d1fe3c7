"""Fixtures for the remote-LLM client tests: a real gboost server (uvicorn on
127.0.0.1, free port, background thread) over the fake bigram backend of
tests/server."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from _fake_backend import FakeBackend  # noqa: E402
from engine.server.app import create_app  # noqa: E402
from engine.server.runner import BackgroundServer  # noqa: E402


@pytest.fixture
def make_server():
    """``make_server(backend=None, fault=None, **create_app_kwargs) -> BackgroundServer``
    (``.backend`` is the FakeBackend, ``.app.state`` has ``faults`` / ``metrics``)."""
    servers = []

    def _make(backend=None, fault=None, **kw):
        backend = backend or FakeBackend()
        srv = BackgroundServer(create_app(backend, backend.model_name, fault, **kw), graceful_shutdown_s=0.5)
        srv.start()
        srv.backend = backend
        servers.append(srv)
        return srv

    yield _make
    for srv in servers:
        srv.stop()


@pytest.fixture
def free_port():
    """A port nobody listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

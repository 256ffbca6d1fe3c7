"""Fixtures: the real app under uvicorn on 127.0.0.1 (free port, background thread)."""

import pytest

from _fake_backend import FakeBackend
from engine.server.app import create_app
from engine.server.runner import BackgroundServer


@pytest.fixture
def make_server():
    """``make_server(backend=None, fault=None, **create_app_kwargs) -> BackgroundServer``;
    every server started is stopped at teardown."""
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


@pytest.fixture(scope="module")
def server():
    """A shared fault-free server over the default FakeBackend (max_logprobs=64)."""
    backend = FakeBackend()
    srv = BackgroundServer(create_app(backend, backend.model_name, max_logprobs=64), graceful_shutdown_s=0.5)
    srv.start()
    srv.backend = backend
    yield srv
    srv.stop()

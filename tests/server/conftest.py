"""Fixtures: the real app under uvicorn on 127.0.0.1 (free port, background thread)."""

import pytest

from _fake_backend import FakeBackend, server_factory
from gboost.server.app import create_app
from gboost.server.uvicorn_server import BackgroundServer


@pytest.fixture
def make_server():
    """``make_server(backend=None, fault=None, **create_app_kwargs) -> BackgroundServer``."""
    with server_factory() as make:
        yield make


@pytest.fixture(scope="module")
def server():
    """A shared fault-free server over the default FakeBackend (max_logprobs=64)."""
    backend = FakeBackend()
    srv = BackgroundServer(create_app(backend, backend.model_name, max_logprobs=64), graceful_shutdown_s=0.5)
    srv.start()
    srv.backend = backend
    yield srv
    srv.stop()

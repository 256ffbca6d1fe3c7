"""OpenAI-compatible HTTP server (``gboost serve``).

Public API (imported lazily so that ``gboost.server.backend`` stays light):

* :func:`create_app` / :func:`serve` (``gboost.server.app``)
* :class:`CompletionBackend`, :class:`BackendInputError` (``gboost.server.backend``)
* :class:`FaultConfig` (``gboost.server.faults``)
* :class:`BackgroundServer` (``gboost.server.uvicorn_server``)
"""

from __future__ import annotations

import importlib

__all__ = ["create_app", "serve", "CompletionBackend", "BackendInputError", "FaultConfig", "BackgroundServer"]

_WHERE = {
    "create_app": "app",
    "serve": "app",
    "CompletionBackend": "backend",
    "BackendInputError": "backend",
    "FaultConfig": "faults",
    "BackgroundServer": "uvicorn_server",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

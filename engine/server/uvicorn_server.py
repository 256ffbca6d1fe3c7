"""Run an ASGI app with uvicorn: in a background thread (tests, notebooks, demos), or in the
foreground with signals reported rather than re-raised (:class:`SignalServer`, ``gboost serve``).

    with BackgroundServer(create_app(backend, "m")) as srv:
        llm = RemoteLLM(srv.url)

The listening socket is bound before the thread starts (port 0 = a free port),
so ``url`` is valid immediately and there is no port race.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from typing import Callable, Iterator, Optional

import uvicorn

__all__ = ["BackgroundServer", "SignalServer"]


class SignalServer(uvicorn.Server):
    """uvicorn.Server that records the signal (SIGINT, SIGTERM) that stopped it instead of raising
    it again after its graceful shutdown, as uvicorn does: under ``asyncio.run`` that re-raised
    SIGINT became a CancelledError -> KeyboardInterrupt traceback. ``stopped_by`` is the signal
    number (None if it stopped otherwise); ``on_signal()`` runs at the first one."""

    def __init__(self, config: uvicorn.Config, on_signal: Optional[Callable[[], None]] = None) -> None:
        super().__init__(config)
        self.stopped_by: Optional[int] = None
        self._on_signal = on_signal

    def handle_exit(self, sig, frame) -> None:
        if self.stopped_by is None:
            self.stopped_by = sig
            if self._on_signal is not None:
                self._on_signal()
        super().handle_exit(sig, frame)  # a second SIGINT forces the exit, as in uvicorn

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


class BackgroundServer:
    def __init__(
        self,
        app,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        graceful_shutdown_s: float = 1.0,
    ) -> None:
        self.app = app
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level=log_level,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=graceful_shutdown_s,
        )
        self.server = uvicorn.Server(config)
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> "BackgroundServer":
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, name=f"uvicorn:{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("uvicorn exited during start-up")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"uvicorn did not start within {timeout_s}s")
            time.sleep(0.005)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

"""The service's test helpers: a narrow student (pixels are not the point here, compile time
is) with a small tile, so that tiled and whole images both run in a few compiles; applications
in process (Starlette's TestClient) and on a loopback port (uvicorn in a thread)."""

from __future__ import annotations

import contextlib
import dataclasses
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator

import uvicorn
from starlette.testclient import TestClient

from ambsn_jax.api import ImageDenoiser
from ambsn_jax.ops.windows import Tiling
from ambsn_jax.serve.app import create_app
from ambsn_jax.serve.limits import Limits

TILING = Tiling(tile=64, overlap=16, batch=2)


def wait_ready(status: Callable[[str], int], timeout: float = 120.0) -> None:
    """Polls GET /readyz until it answers 200; `status(path)` is a GET's status code."""
    deadline = time.monotonic() + timeout
    while status("/readyz") != 200:
        assert time.monotonic() < deadline, "the service did not get ready"
        time.sleep(0.05)


@contextlib.contextmanager
def client_for(model: ImageDenoiser, limits: Limits = Limits(), token: str | None = None) -> Iterator[TestClient]:
    """An in-process client of a warmed-up service."""
    with TestClient(create_app(model, limits, token), raise_server_exceptions=False) as client:
        wait_ready(lambda path: client.get(path).status_code)
        yield client


@contextlib.contextmanager
def loopback(app) -> Iterator[str]:
    """`app` served by uvicorn on a free loopback port, in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@dataclasses.dataclass(frozen=True)
class GatedDenoiser(ImageDenoiser):
    """The model, but each network call first waits for `gate`: lets a test hold the worker
    busy to fill the queue, pass a deadline, or leave while a job waits."""

    gate: threading.Event = dataclasses.field(default_factory=threading.Event)
    entered: threading.Event = dataclasses.field(default_factory=threading.Event)  # a call reached the gate
    seeds: list = dataclasses.field(default_factory=list)  # each call's seeds, once through the gate

    def batch(self, images, seeds, indices, float_max=1.0):
        self.entered.set()
        assert self.gate.wait(timeout=60), "the test never opened the gate"
        self.seeds.append(list(seeds))
        return super().batch(images, seeds, indices, float_max)


def gated(model: ImageDenoiser) -> GatedDenoiser:
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)}
    return GatedDenoiser(**fields)


def http_status(url: str) -> int:
    """The status code of a GET of `url` (a live server's)."""
    try:
        with urllib.request.urlopen(url) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def png_declaring(width: int, height: int, payload: bytes = b"\x00") -> bytes:
    """A gray 8-bit PNG whose header says width x height, holding `payload` compressed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(payload)) + chunk(b"IEND", b"")

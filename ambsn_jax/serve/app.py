"""The Starlette application: routes, refusals as JSON, the optional bearer token, and the
background warm-up that /readyz waits for.

Errors are `{"error": KIND, "message": SENTENCE}` with the status that fits (400, 401, 404,
405, 413, 415, 503 with Retry-After, 504); the server keeps answering after each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from importlib import resources

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from ambsn_jax.api import ImageDenoiser
from ambsn_jax.data.images import encode_png
from ambsn_jax.serve.batcher import Batcher, QueueFull
from ambsn_jax.serve.limits import Limits
from ambsn_jax.serve.metrics import Metrics
from ambsn_jax.serve.upload import RequestError, decode_upload

log = logging.getLogger("ambsn_jax.serve")


class Service:
    """The state behind the routes: the model, its batcher once warm, the metrics, the token."""

    def __init__(self, model: ImageDenoiser, limits: Limits, token: str | None):
        self.model, self.limits, self.token = model, limits, token
        self.batcher = Batcher(model, limits.max_queue, limits.max_batch, self._on_batch)
        self.metrics = Metrics(self.batcher.depth)
        self.ready = threading.Event()
        self.failure: str | None = None

    def _on_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch(size, seconds)

    def warm_up(self) -> None:
        """Compiles the tile program and runs one small image end to end, then opens the queue."""
        try:
            self.model.compile_tiles()
            self.model(np.zeros((16, 16, 3), np.uint8))
        except Exception as e:  # reported by /readyz, which stays 503
            log.exception("warm-up failed")
            self.failure = f"{type(e).__name__}: {e}"
            return
        self.batcher.start()
        self.ready.set()
        self.metrics.ready.set(1)
        log.info("ready: %s on %d device(s)", self.model.checkpoint.path, self.model.devices)

    def authorize(self, request: Request) -> None:
        if self.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), self.token.encode()):
            raise RequestError(401, "unauthorized", "send the server's token as 'Authorization: Bearer TOKEN'", {"WWW-Authenticate": "Bearer"})

    def error(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        self.metrics.errors.labels(kind).inc()
        return JSONResponse({"error": kind, "message": message}, status, headers=headers)

    async def denoise(self, request: Request) -> Response:
        """POST /v1/denoise: the body's image denoised, as a PNG of its depth and channels."""
        start = time.perf_counter()
        try:
            return await self._denoise(request)
        finally:
            self.metrics.latency.observe(time.perf_counter() - start)

    async def _denoise(self, request: Request) -> Response:
        self.authorize(request)
        limits = self.limits
        if not self.ready.is_set():
            raise RequestError(503, "not_ready", "the model is still being compiled; retry shortly", {"Retry-After": "5"})
        seed, index = _int_param(request, "seed", 2**32 - 1), _int_param(request, "index", 2**31 - 1)
        samples = await run_in_threadpool(decode_upload, await _body(request, limits.max_bytes), limits.max_pixels)
        try:
            future = self.batcher.submit(samples, seed, index, limits.timeout_s)
        except QueueFull:
            message = f"{limits.max_queue} images are already waiting; retry shortly"
            raise RequestError(503, "queue_full", message, {"Retry-After": "2"}) from None
        out = await _result(request, future, limits.timeout_s)
        if out is None:
            return self.error(499, "client_disconnected", "the client left before the result was ready")
        return Response(await run_in_threadpool(encode_png, out), media_type="image/png")

    async def metrics_text(self, request: Request) -> Response:
        self.authorize(request)
        body, content_type = self.metrics.exposition()
        return Response(body, headers={"Content-Type": content_type})

    async def readyz(self, request: Request) -> JSONResponse:
        ready = self.ready.is_set()
        body = {"ready": ready, "checkpoint": str(self.model.checkpoint.path), "arch": self.model.checkpoint.meta.arch}
        if self.failure:
            body["error"] = self.failure
        return JSONResponse(body, 200 if ready else 503)

    async def on_request_error(self, request: Request, e: RequestError) -> Response:
        return self.error(e.status, e.kind, e.message, e.headers)

    async def on_http_error(self, request: Request, e: HTTPException) -> Response:
        if e.status_code == 404:
            return self.error(404, "not_found", f"no such path {request.url.path}; the API is POST /v1/denoise")
        if e.status_code == 405:
            allowed = (e.headers or {}).get("Allow", "another method")
            return self.error(405, "method_not_allowed", f"{request.method} {request.url.path}: use {allowed}", e.headers)
        return self.error(e.status_code, "http_error", str(e.detail), e.headers)

    async def on_crash(self, request: Request, e: Exception) -> Response:
        return self.error(500, "internal", f"the server failed on this request ({type(e).__name__}); see its log")


def _int_param(request: Request, name: str, high: int) -> int:
    text = request.query_params.get(name, "0")
    if not text.isdigit() or int(text) > high:
        raise RequestError(400, "bad_parameter", f"{name}={text!r}: must be an integer in 0..{high}")
    return int(text)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed `limit` bytes."""
    too_large = RequestError(413, "body_too_large", f"the body exceeds this server's limit of {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect as e:
        raise RequestError(400, "client_disconnected", "the client left before sending the whole body") from e
    return b"".join(chunks)


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the ASGI server says so once the body is read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _result(request: Request, future: Future, timeout: float) -> np.ndarray | None:
    """The job's result; None if the client left first. Past `timeout` the job is cancelled."""
    result = asyncio.wrap_future(future)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({result, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if result in done:
        return result.result()
    future.cancel()  # a queued job is skipped; a running one has its result dropped
    if gone in done:
        return None
    raise RequestError(504, "timeout", f"the image was not denoised within this server's limit of {timeout:g} s")


def create_app(model: ImageDenoiser, limits: Limits = Limits(), token: str | None = None) -> ASGIApp:
    """The service for `model` (ASGI): its warm-up starts with the application, its queue
    closes with it. `token`: required (as a bearer token) by all but /, /healthz and /readyz."""
    service = Service(model, limits, token)
    page = resources.files("ambsn_jax.serve").joinpath("page.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        threading.Thread(target=service.warm_up, name="ambsn-warm-up", daemon=True).start()
        yield
        service.batcher.stop()

    routes = [
        Route("/", lambda request: HTMLResponse(page)),
        Route("/v1/denoise", service.denoise, methods=["POST"]),
        Route("/healthz", lambda request: JSONResponse({"status": "ok"})),
        Route("/readyz", service.readyz),
        Route("/metrics", service.metrics_text),
    ]
    handlers = {RequestError: service.on_request_error, HTTPException: service.on_http_error, Exception: service.on_crash}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    return service.metrics.count_requests(app)

"""The HTTP API in process: the library's pixels for every accepted form of image, the health,
readiness and metrics endpoints, the token, and a battery of bad requests that each get a
clear JSON refusal while the server keeps answering."""

from __future__ import annotations

import socket
import threading
import urllib.request

import cv2
import numpy as np
import pytest
from starlette.testclient import TestClient

import ambsn_jax
from ambsn_jax.data.images import decode_samples, encode_png
from ambsn_jax.serve.app import create_app
from ambsn_jax.serve.limits import Limits
from tests.serve.helpers import TILING, client_for, gated, http_status, loopback, png_declaring, wait_ready

H, W = 20, 24  # one network shape for every whole-image case: one compile


def _samples(dtype, channels: int, h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


def _encode(samples: np.ndarray, ext: str) -> bytes:
    bgr = samples if samples.ndim == 2 else samples[:, :, [2, 1, 0, *range(3, samples.shape[2])]]
    ok, data = cv2.imencode(ext, bgr)
    assert ok
    return data.tobytes()


@pytest.fixture(scope="module")
def client(serve_model):
    with client_for(serve_model, Limits(max_bytes=300_000, max_pixels=200_000)) as c:
        yield c


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_and_tiff_come_back_as_the_library_denoises_them(client, serve_model, ext, dtype, channels):
    samples = _samples(dtype, channels, seed=channels)
    response = client.post("/v1/denoise", content=_encode(samples, ext), headers={"Content-Type": "image/png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    got = decode_samples(response.content, "the response")
    assert got.dtype == dtype and got.shape == samples.shape
    np.testing.assert_array_equal(got, serve_model(samples))


def test_jpeg_and_a_tiled_image_match_ambsn_jax_denoise(client, student_ckpt):
    jpeg = _encode(_samples(np.uint8, 3, seed=5), ".jpg")
    response = client.post("/v1/denoise?seed=3&index=2", content=jpeg)
    assert response.status_code == 200
    want = ambsn_jax.denoise(decode_samples(jpeg, "the jpeg"), student_ckpt, seed=3, tiling=TILING)
    np.testing.assert_array_equal(decode_samples(response.content, "the response"), want)
    big = _samples(np.uint16, 3, h=70, w=90, seed=6)  # above the 64 px tile: cut and cross-faded
    response = client.post("/v1/denoise", content=encode_png(big))
    want = ambsn_jax.denoise(big, student_ckpt, tiling=TILING)
    np.testing.assert_array_equal(decode_samples(response.content, "the response"), want)


def test_health_readiness_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["arch"] == "student"
    client.post("/v1/denoise", content=b"not an image")
    text = client.get("/metrics").text
    for line in (
        'ambsn_requests_total{method="GET",path="/readyz",status="200"}',
        'ambsn_errors_total{kind="unsupported_media_type"}',
        "ambsn_denoise_seconds_bucket{",
        "ambsn_queue_depth 0.0",
        "ambsn_batch_size_count",
        "ambsn_ready 1.0",
    ):
        assert line in text, line


def test_the_page_is_served_without_external_resources(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="file"' in page.text and "v1/denoise" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # works offline: no CDN


_BOMB = png_declaring(100_000, 100_000)  # 10 gigapixels declared in a ~60-byte file


@pytest.mark.parametrize(
    "method, path, body, status, kind",
    [
        ("POST", "/v1/denoise", b"", 400, "empty_body"),
        ("POST", "/v1/denoise", b"hello, this is text", 415, "unsupported_media_type"),
        ("POST", "/v1/denoise", b"GIF89a" + bytes(40), 415, "unsupported_media_type"),
        ("POST", "/v1/denoise", _encode(_samples(np.uint8, 3), ".png")[:300], 400, "corrupt_image"),
        ("POST", "/v1/denoise", _encode(_samples(np.uint8, 3), ".jpg")[:400], 400, "corrupt_image"),
        ("POST", "/v1/denoise", b"\x89PNG\r\n\x1a\n" + bytes(30), 400, "corrupt_image"),
        ("POST", "/v1/denoise", bytes(300_001), 413, "body_too_large"),
        ("POST", "/v1/denoise", encode_png(np.zeros((500, 500), np.uint8)), 413, "too_many_pixels"),
        ("POST", "/v1/denoise", _BOMB, 413, "too_many_pixels"),
        ("POST", "/v1/denoise?seed=-1", b"x", 400, "bad_parameter"),
        ("POST", "/v1/denoise?index=two", b"x", 400, "bad_parameter"),
        ("GET", "/v1/denoise", None, 405, "method_not_allowed"),
        ("POST", "/healthz", b"", 405, "method_not_allowed"),
        ("GET", "/v2/denoise", None, 404, "not_found"),
    ],
)
def test_bad_requests_get_a_json_refusal_and_the_server_answers_after(client, method, path, body, status, kind):
    response = client.request(method, path, content=body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == kind and len(response.json()["message"]) > 10
    ok = client.post("/v1/denoise", content=_encode(_samples(np.uint8, 3), ".png"))
    assert ok.status_code == 200


def test_a_token_guards_all_but_the_page_and_health(serve_model):
    with client_for(serve_model, token="s3cret") as client:
        body = _encode(_samples(np.uint8, 3), ".png")
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            refused = client.post("/v1/denoise", content=body, headers=headers)
            assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
            assert refused.headers["www-authenticate"] == "Bearer"
            assert client.get("/metrics", headers=headers).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert client.post("/v1/denoise", content=body, headers=good).status_code == 200
        assert client.get("/metrics", headers=good).status_code == 200
        assert all(client.get(p).status_code == 200 for p in ("/", "/healthz", "/readyz"))


def test_before_its_warm_up_the_service_says_it_is_not_ready(serve_model):
    client = TestClient(create_app(serve_model))  # no `with`: the lifespan, and so the warm-up, never starts
    assert client.get("/readyz").status_code == 503
    refused = client.post("/v1/denoise", content=_encode(_samples(np.uint8, 3), ".png"))
    assert refused.status_code == 503 and refused.json()["error"] == "not_ready" and refused.headers["retry-after"]


def test_a_full_queue_and_a_late_answer_are_refused_in_words(serve_model):
    model = gated(serve_model)
    model.gate.set()  # let the warm-up through
    with client_for(model, Limits(max_queue=1, max_batch=1, timeout_s=1.0)) as client:
        model.gate.clear()
        model.entered.clear()
        body = _encode(_samples(np.uint8, 3), ".png")
        # One request runs (held at the gate), one waits in the queue of one, the third is refused.
        first = threading.Thread(target=lambda: client.post("/v1/denoise", content=body))
        first.start()
        assert model.entered.wait(timeout=30)
        late = client.post("/v1/denoise", content=body)  # queued behind the gate past its 1 s
        assert late.status_code == 504 and late.json()["error"] == "timeout"
        second = threading.Thread(target=lambda: client.post("/v1/denoise", content=body))
        second.start()
        _until(lambda: _depth(client) == 1)
        full = client.post("/v1/denoise", content=body)
        assert full.status_code == 503 and full.json()["error"] == "queue_full" and int(full.headers["retry-after"]) > 0
        model.gate.set()
        first.join(), second.join()
        assert client.post("/v1/denoise", content=body).status_code == 200
        assert _depth(client) == 0


def test_a_client_that_leaves_has_its_queued_job_dropped(serve_model):
    model = gated(serve_model)
    model.gate.set()
    with loopback(create_app(model, Limits(max_batch=1))) as base:
        wait_ready(lambda path: http_status(base + path))
        model.gate.clear(), model.entered.clear()
        body = _encode(_samples(np.uint8, 3), ".png")
        first = threading.Thread(target=lambda: urllib.request.urlopen(urllib.request.Request(base + "/v1/denoise?seed=1", body)).read())
        first.start()
        assert model.entered.wait(timeout=30)
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as leaver:  # sends a whole request, then hangs up
            leaver.sendall(b"POST /v1/denoise?seed=2 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            _until(lambda: _metric(base, "ambsn_queue_depth") == 1)
        _until(lambda: _metric(base, 'ambsn_errors_total{kind="client_disconnected"}') == 1)
        assert _metric(base, "ambsn_queue_depth") == 0
        model.gate.set()
        first.join()
        assert urllib.request.urlopen(urllib.request.Request(base + "/v1/denoise?seed=3", body)).status == 200
        assert model.seeds[-2:] == [[1], [3]]  # seed 2 never ran


def _metric(base: str, name: str) -> float:
    text = urllib.request.urlopen(base + "/metrics").read().decode()
    return next((float(li.rsplit(" ", 1)[1]) for li in text.splitlines() if li.startswith(name + " ")), 0.0)


def _depth(client) -> int:
    line = next(li for li in client.get("/metrics").text.splitlines() if li.startswith("ambsn_queue_depth "))
    return int(float(line.split()[1]))


def _until(condition, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)

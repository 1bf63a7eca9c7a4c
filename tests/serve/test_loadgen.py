"""A bounded load on loopback: 8 clients, 200 requests, then stop. No request may fail, the
server's memory must not grow beyond a margin, and the figures are printed (the README's come
from `bench/serve_load.py`, the same client against the real weights)."""

from __future__ import annotations

from ambsn_jax.serve.app import create_app
from ambsn_jax.serve.limits import Limits
from ambsn_jax.serve.loadgen import demo_png, run_load, rss_mib
from tests.serve.helpers import http_status, loopback, wait_ready

# Allowed growth of the process's resident memory over the run: each request's buffers are a
# few hundred kB, so a leak of one per request (200) would exceed it; allocator slack stays under.
RSS_MARGIN_MIB = 64


def test_200_requests_from_8_clients_all_succeed_and_memory_stays_bounded(serve_model):
    body = demo_png(48, 60)
    with loopback(create_app(serve_model, Limits(max_queue=16))) as base:
        wait_ready(lambda path: http_status(base + path))
        url = base + "/v1/denoise"
        warm = run_load(url, body, clients=8, requests=16)  # the batch sizes' programs compile here
        assert not warm.failures, warm.failures[:3]
        before = rss_mib()
        result = run_load(url, body, clients=8, requests=200)
        after = rss_mib()
    print(f"\nload: {result.summary()}; RSS {before:.0f} -> {after:.0f} MiB")
    assert not result.failures, result.failures[:3]
    assert len(result.latencies) == 200
    assert after - before < RSS_MARGIN_MIB, f"RSS grew {after - before:.0f} MiB over 200 requests"

"""A bounded load on a running service: C clients post the same image N times in all, over
loopback. The tests and `bench/serve_load.py` both drive it; it uses the standard library only."""

from __future__ import annotations

import dataclasses
import http.client
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np


def demo_png(height: int = 128, width: int = 128, seed: int = 0) -> bytes:
    """A noisy photo as PNG bytes: a crop of a validation photo of the demo set (never trained
    on) with the demo's camera noise."""
    import skimage.data

    from ambsn_jax.data.camera_noise import add_camera_noise
    from ambsn_jax.data.images import encode_png

    photo = skimage.data.chelsea()  # 300 x 451: larger requests are refused, not padded
    if height > photo.shape[0] or width > photo.shape[1]:
        raise ValueError(f"the demo photo is {photo.shape[0]} x {photo.shape[1]}; ask for at most that")
    top, left = (photo.shape[0] - height) // 2, (photo.shape[1] - width) // 2
    clean = photo[top : top + height, left : left + width]
    return encode_png(add_camera_noise(clean, np.random.default_rng(seed)))


@dataclasses.dataclass(frozen=True)
class LoadResult:
    latencies: list[float]  # seconds, of the requests answered 200
    failures: list[str]  # one line per other outcome
    seconds: float  # wall time of the whole run

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def summary(self) -> str:
        done = len(self.latencies)
        return (
            f"{done + len(self.failures)} requests, {len(self.failures)} failed, {done / self.seconds:.2f} req/s, "
            f"p50 {self.percentile(50):.3f} s, p99 {self.percentile(99):.3f} s, {self.seconds:.1f} s in all"
        )


def _client(url: str, body: bytes, count: int, headers: dict[str, str], out: LoadResult, lock: threading.Lock) -> None:
    """Posts `body` `count` times over one kept-alive connection."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    try:
        for _ in range(count):
            start = time.perf_counter()
            try:
                conn.request("POST", parts.path or "/", body, headers)
                response = conn.getresponse()
                data = response.read()
                ok, line = response.status == 200 and data.startswith(b"\x89PNG"), f"{response.status} {data[:200]!r}"
            except (OSError, http.client.HTTPException) as e:
                conn.close()  # the next request reconnects
                ok, line = False, f"{type(e).__name__}: {e}"
            with lock:
                (out.latencies.append(time.perf_counter() - start) if ok else out.failures.append(line))
    finally:
        conn.close()


def run_load(url: str, body: bytes, clients: int = 8, requests: int = 200, token: str | None = None) -> LoadResult:
    """`requests` POSTs of `body` to `url` (.../v1/denoise) from `clients` threads at once."""
    headers = {"Content-Type": "image/png"} | ({"Authorization": f"Bearer {token}"} if token else {})
    result, lock = LoadResult([], [], 0.0), threading.Lock()
    shares = [requests // clients + (i < requests % clients) for i in range(clients)]
    threads = [threading.Thread(target=_client, args=(url, body, n, headers, result, lock)) for n in shares]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return dataclasses.replace(result, seconds=time.perf_counter() - start)


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory of process `pid` (Linux), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")

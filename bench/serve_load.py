"""`ambsn-serve` under a bounded load on loopback: the command started as a user starts it,
C clients posting the same demo photo N times in all, then stop. Prints requests/s, p50 / p99
latency, failures and the server's resident memory before and after, and the load average
(other jobs share the cores). README "Serve" quotes its figures.

    python bench/serve_load.py [--ckpt default|student|teacher|PATH] [--size 256] [--clients 8]
                               [--requests 200] [--max-batch 4] [--json OUT] [--screenshot PNG]

`--screenshot` also loads the page in headless Chromium (Debian's chromium and chromedriver),
uploads the photo and saves what it shows: README's picture.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ambsn_jax.checkpoint.store import DEFAULT_WEIGHTS, DEMO_CHECKPOINT, DEMO_STUDENT
from ambsn_jax.cli.launch import free_port
from ambsn_jax.serve.loadgen import demo_png, rss_mib, run_load

NAMED = {"default": DEFAULT_WEIGHTS, "student": DEMO_STUDENT, "teacher": DEMO_CHECKPOINT}


def _wait_ready(base: str, server: subprocess.Popen, timeout: float = 600) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(base + "/readyz") as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise SystemExit(f"not ready after {timeout:g} s")


def _screenshot(base: str, body: bytes, out: Path) -> None:
    import shutil
    import tempfile

    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,820"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            photo = Path(tmp) / "noisy_cat.png"
            photo.write_bytes(body)
            driver.get(base + "/")
            driver.find_element(By.ID, "file").send_keys(str(photo))
            WebDriverWait(driver, 600).until(lambda d: d.find_element(By.ID, "download").is_displayed())
            time.sleep(0.5)  # the image's onload caption
            driver.save_screenshot(str(out))
    finally:
        driver.quit()


def measure(args: argparse.Namespace) -> dict:
    ckpt = NAMED.get(args.ckpt, args.ckpt)
    port = free_port()
    command = ["ambsn-serve", "--ckpt", str(ckpt), "--port", str(port), "--max-batch", str(args.max_batch)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        ready_s = _wait_ready(base, server)
        body = demo_png(args.size, args.size)
        # Each batch size compiles its program on first use: warm them before measuring.
        warm = run_load(base + "/v1/denoise", body, args.clients, 2 * args.clients)
        rss_before = rss_mib(server.pid)
        result = run_load(base + "/v1/denoise", body, args.clients, args.requests)
        rss_after = rss_mib(server.pid)
        if args.screenshot:
            _screenshot(base, body, args.screenshot)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    return {
        "ckpt": args.ckpt, "size": args.size, "clients": args.clients, "requests": args.requests,
        "max_batch": args.max_batch, "ready_s": round(ready_s, 1), "warm_failures": len(warm.failures),
        "failures": len(result.failures), "req_per_s": round(len(result.latencies) / result.seconds, 3),
        "p50_s": round(result.percentile(50), 3), "p99_s": round(result.percentile(99), 3),
        "rss_before_mib": round(rss_before), "rss_after_mib": round(rss_after),
        "load_average": os.getloadavg(), "summary": result.summary(),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default="default", help="default (what ambsn-serve serves with no --ckpt), student, teacher (the shipped demo weights) or a path")
    p.add_argument("--size", type=int, default=256, help="side of the posted square demo photo")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--json", type=Path, help="append the result as one JSON line")
    p.add_argument("--screenshot", type=Path, help="also save the page after an upload as this PNG")
    args = p.parse_args()
    row = measure(args)
    print(json.dumps(row))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())

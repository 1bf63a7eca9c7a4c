"""`ambsn-serve` (ambsn_jax.cli.serve): refusals of a bad command line, and the command itself
serving on loopback until interrupted. What the service answers is tests/serve/'s business."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, one_error_line

pytest.importorskip("uvicorn", reason="the service's extra is not installed: pip install -e '.[test-serve]'")

from ambsn_jax.cli.launch import free_port  # noqa: E402
from ambsn_jax.cli.serve import main  # noqa: E402
from ambsn_jax.serve.loadgen import demo_png, run_load  # noqa: E402
from tests.serve.helpers import http_status  # noqa: E402


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--tile", "64", "--overlap", "64"], "--overlap 64: must be below --tile 64"),
        (["--port", "70000"], "'70000' is not an integer in 0..65535"),
        (["--queue", "0"], "'0' is not an integer >= 1"),
        (["--ckpt", "no/such/ckpt"], "no/such/ckpt"),
        (["--self-ensemble", "3"], "self-ensemble of 3 orientations: give one of 1, 2, 4, 8"),
    ],
)
def test_a_bad_command_line_is_one_error_line(argv, fragment, capsys):
    assert main(argv) == 2
    one_error_line(capsys.readouterr().err, fragment)


def test_the_self_ensemble_is_the_checkpoint_s_unless_given():
    from ambsn_jax.cli.serve import build_parser

    assert build_parser().parse_args([]).self_ensemble is None  # api.load then takes the metadata's
    assert build_parser().parse_args(["--self-ensemble"]).self_ensemble == 8
    assert build_parser().parse_args(["--self-ensemble", "4"]).self_ensemble == 4


def test_the_command_serves_until_interrupted(student_ckpt):
    port = free_port()
    argv = [sys.executable, "-m", "ambsn_jax.cli.serve", "--ckpt", str(student_ckpt), "--port", str(port), "--tile", "64", "--overlap", "16"]
    server = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while (status := _status(base + "/readyz")) != 200:
            assert server.poll() is None and time.monotonic() < deadline, f"not ready ({status})"
            time.sleep(0.2)
        result = run_load(base + "/v1/denoise", demo_png(32, 40), clients=2, requests=4)
        assert not result.failures and len(result.latencies) == 4
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=60)[0]
    assert server.returncode == 0, output
    assert "weights: " in output and "Application startup complete" in output


def _status(url: str) -> int | None:
    try:
        return http_status(url)
    except OSError:  # not listening yet
        return None

"""What every command shares (ambsn_jax.cli): the on-disk compilation cache."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = """
import jax, jax.numpy as jnp
from ambsn_jax.cli import run_cli
raise SystemExit(run_cli(lambda argv: int(jax.jit(jnp.sin)(1.0) > 2)))
"""


def _run(env: dict[str, str]) -> None:
    base = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    # Cache even this tiny program, which compiles in far under the default 1 s threshold.
    env = base | {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"} | env
    subprocess.run([sys.executable, "-c", PROGRAM], env=env, check=True, cwd=ROOT, capture_output=True)


def test_compiled_programs_are_kept_per_machine(tmp_path):
    _run({"XDG_CACHE_HOME": str(tmp_path)})
    cache = tmp_path / "ambsn_jax" / "xla" / platform.node()
    assert cache.is_dir() and any(cache.iterdir())


def test_jax_compilation_cache_dir_decides_when_set(tmp_path):
    _run({"XDG_CACHE_HOME": str(tmp_path / "default"), "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "mine")})
    assert any((tmp_path / "mine").iterdir()) and not (tmp_path / "default").exists()
    _run({"XDG_CACHE_HOME": str(tmp_path / "off"), "JAX_COMPILATION_CACHE_DIR": ""})
    assert not (tmp_path / "off").exists()

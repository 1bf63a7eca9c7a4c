"""What every command shares (ambsn_jax.cli.common): one `error:` line, the on-disk compilation cache."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from ambsn_jax.cli.common import ArgumentParser, run_cli
from ambsn_jax.errors import UserError
from tests.helpers import ROOT

PROGRAM = """
import jax, jax.numpy as jnp
from ambsn_jax.cli.common import enable_compilation_cache, run_cli

def main(argv):
    enable_compilation_cache()
    return int(jax.jit(jnp.sin)(1.0) > 2)

raise SystemExit(run_cli(main))
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


def test_user_errors_are_one_line_and_status_2(capsys):
    def refuse(argv):
        raise UserError(f"bad {argv[0]}")

    assert run_cli(refuse, ["thing"]) == 2
    assert capsys.readouterr() == ("", "error: bad thing\n")

    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_cli(interrupted, []) == 130
    assert capsys.readouterr().err == "error: interrupted\n"
    assert run_cli(lambda argv: 0, []) == 0


def test_argument_errors_are_user_errors():
    parser = ArgumentParser(prog="x")
    parser.add_argument("--n", type=int)
    with pytest.raises(UserError, match=r"^argument --n: invalid int value: 'two' \(see --help\)$"):
        parser.parse_args(["--n", "two"])
    assert parser.parse_args(["--n", "2"]).n == 2

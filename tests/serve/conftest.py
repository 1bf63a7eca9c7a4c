"""The service's tests need its extra; they share one narrow student (see `helpers`)."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette", reason="the service's extra is not installed: pip install -e '.[test-serve]'")

import ambsn_jax  # noqa: E402
from ambsn_jax.api import ImageDenoiser  # noqa: E402
from tests.serve.helpers import TILING  # noqa: E402


@pytest.fixture(scope="session")
def serve_model(student_ckpt) -> ImageDenoiser:
    return ambsn_jax.load(student_ckpt, tiling=TILING)

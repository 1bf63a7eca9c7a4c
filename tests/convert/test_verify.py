"""Verification against the release's PyTorch network (ambsn_jax.convert.verify)."""

from __future__ import annotations

import numpy as np
import pytest

from ambsn_jax.convert import verify
from ambsn_jax.errors import UserError
from tests.helpers import numpy_sd


def test_max_abs_diffs_measure_the_three_forwards(flax_model, official_state_dict):
    diffs = verify.max_abs_diffs(flax_model(8), numpy_sd(official_state_dict(8)))
    assert set(diffs) == {"bsn", "pd2", "pd5"} and max(diffs.values()) < 1e-4
    other = numpy_sd(official_state_dict(8)) | {"bsn.tail.6.bias": np.full(3, 1.0, np.float32)}
    moved = verify.max_abs_diffs(flax_model(8), other)
    assert min(moved.values()) > 0.5  # one changed bias shows in every forward


def test_require_within_refuses_any_difference_over_the_tolerance(capsys):
    verify.require_within({"bsn": 1e-6, "pd2": 2e-6}, 1e-5, "a.pth", "the PyTorch reference")
    out = capsys.readouterr().out
    assert out.startswith("max abs diff vs the PyTorch reference (tolerance 1e-05):") and "  pd2: 2.000e-06" in out
    with pytest.raises(UserError, match=r"^a.pth: verification failed: pd2 by 2.000e-03, pd5 by nan > 0.001; nothing written$"):
        verify.require_within({"bsn": 1e-6, "pd2": 2e-3, "pd5": float("nan")}, 1e-3, "a.pth", "x")
    assert verify.DEFAULT_TOLERANCE == 5e-3

"""Blind-spot mask patterns: the spec's, and those the releases build."""

from __future__ import annotations

import numpy as np
import pytest

from ambsn_jax.convert import reference
from ambsn_jax.nets import mmbsn
from ambsn_jax.nets.masks import MASK_KINDS, blind_spot_mask
from ambsn_jax.nets.mmbsn import MM_KINDS, MMBSNConfig


def test_mask_patterns_are_the_spec():
    central = np.ones((3, 3))
    central[1, 1] = 0
    x_rows = ["01110", "10101", "11011", "10101", "01110"]
    x5 = np.array([[int(ch) for ch in row] for row in x_rows])
    np.testing.assert_array_equal(blind_spot_mask("central", 3), central)
    np.testing.assert_array_equal(blind_spot_mask("x", 5), x5)
    np.testing.assert_array_equal(reference.CENTRAL_3, central)
    np.testing.assert_array_equal(reference.X_5, x5)


def test_mask_patterns_are_the_releases():
    np.testing.assert_array_equal(blind_spot_mask("a45", 3), [[1, 1, 0], [1, 0, 1], [0, 1, 1]])
    for kind, (_, pattern) in MM_KINDS.items():
        # The release builds each branch's mask from the name it passes ("col" for "c", ...).
        name = {"c": "col", "r": "row"}.get(kind, kind)
        for k in (3, 5):
            np.testing.assert_array_equal(blind_spot_mask(pattern, k), reference.release_mask(name, k), err_msg=kind)
    for kind in ("c", "r"):  # the release's quirk: centre masks, not column / row masks
        for _, want in mmbsn.mask_map(MMBSNConfig(mask_type=kind)).values():
            np.testing.assert_array_equal(want, blind_spot_mask("central", len(want)))


def test_every_mask_hides_the_centre_and_unknown_kinds_are_refused():
    # TM-BSN's triangle keeps the centre: its blind spot comes from shifts outside the convs.
    for kind in (k for k in MASK_KINDS if k != "triu"):
        for k in (3, 5):
            m = blind_spot_mask(kind, k)
            assert m.dtype == np.float32 and m[k // 2, k // 2] == 0 and set(np.unique(m)) <= {0.0, 1.0}, kind
    with pytest.raises(ValueError, match="unknown mask kind 'y'; known: central, x"):
        blind_spot_mask("y", 3)

"""Windows over an axis, padded batches and the minimum-side padding (ambsn_jax.ops.windows)."""

from __future__ import annotations

import numpy as np
import pytest

from ambsn_jax.ops.windows import Tiling, pad_to_min_side, padded_batches, window_starts


@pytest.mark.parametrize(
    "length,size,stride,want",
    [(1000, 512, 384, [0, 384, 488]), (700, 512, 384, [0, 188]), (512, 512, 384, [0]), (300, 512, 384, [0]),
     (10, 4, 4, [0, 4, 6]), (12, 4, 4, [0, 4, 8])],  # fmt: skip
)
def test_window_starts_cover_the_axis_with_the_last_flush(length, size, stride, want):
    starts = window_starts(length, size, stride)
    assert starts == want
    covered = np.zeros(length, int)
    for s in starts:
        covered[s : s + size] += 1
    assert covered.min() >= 1 and starts[-1] == max(0, length - size)


def test_padded_batches_repeat_the_last_index():
    batches = padded_batches(7, 3)
    assert [(list(i), v) for i, v in batches] == [([0, 1, 2], 3), ([3, 4, 5], 3), ([6, 6, 6], 1)]
    assert [(list(i), v) for i, v in padded_batches(2, 4)] == [([0, 1, 1, 1], 2)]
    assert padded_batches(0, 4) == []


def test_pad_to_min_side_edge_pads_bottom_right_only():
    image = np.arange(2 * 3 * 1).reshape(2, 3, 1)
    padded = pad_to_min_side(image, 4)
    assert padded.shape == (4, 4, 1)
    np.testing.assert_array_equal(padded[:2, :3], image)
    np.testing.assert_array_equal(padded[2:, :3, 0], [[3, 4, 5], [3, 4, 5]])  # the last row repeated
    np.testing.assert_array_equal(padded[:, 3, 0], [2, 5, 5, 5])  # the last column repeated
    big = np.zeros((5, 6, 3))
    assert pad_to_min_side(big, 4) is big  # nothing to pad: the very array
    blocks = np.arange(2 * 2 * 5).reshape(2, 2, 5)
    out = pad_to_min_side(blocks, 3, axes=(1, 2))
    assert out.shape == (2, 3, 5)
    np.testing.assert_array_equal(out[:, 2], blocks[:, 1])


def test_tiling_defaults_are_the_command_lines():
    assert Tiling() == Tiling(tile=512, overlap=64, batch=4)

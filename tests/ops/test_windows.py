"""Windows over an axis, padded batches and the minimum-side padding (ambsn_jax.ops.windows)."""

from __future__ import annotations

import numpy as np
import pytest

from ambsn_jax.ops.windows import Tiling, even_batches, even_windows, pad_to_min_side, padded_batches, window_starts


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


@pytest.mark.parametrize("length,most,overlap", [(1024, 512, 64), (4000, 512, 32), (3000, 512, 32), (513, 512, 64), (130, 64, 16), (1000, 512, 16)])
def test_even_windows_are_the_fewest_that_overlap_enough(length, most, overlap):
    size, starts = even_windows(length, most, overlap)
    assert size <= most and starts[0] == 0 and starts[-1] + size == length
    assert min(size - (b - a) for a, b in zip(starts, starts[1:])) >= overlap
    assert (len(starts) - 1) * (most - overlap) + overlap < length  # one window fewer could not cover
    assert even_windows(300, 512, 64) == (300, [0])


def test_even_batches_are_of_one_size_with_little_padding():
    assert [(list(i), v) for i, v in even_batches(9, 4)] == [([0, 1, 2], 3), ([3, 4, 5], 3), ([6, 7, 8], 3)]
    for count, most, multiple in [(63, 4, 1), (5, 4, 2), (12, 8, 4), (1, 4, 1)]:
        batches = even_batches(count, most, multiple)
        sizes = {len(i) for i, _ in batches}
        assert len(sizes) == 1 and sizes.pop() % multiple == 0 and len(batches) == -(-count // most)
        assert sorted(int(j) for i, v in batches for j in i[:v]) == list(range(count))
        assert sum(len(i) - v for i, v in batches) < len(batches) * multiple
    assert even_batches(0, 4) == []


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
    assert Tiling() == Tiling(tile=512, overlap=32, batch=4)

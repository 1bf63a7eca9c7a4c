"""Blind-spot mask patterns for the masked first convolution of each branch.

A mask is a (k, k) 0/1 array indexed [row][col]; 0 marks a blind tap. The patterns are
those of the releases (AM-BSN, MM-BSN); see `../shared/spec/AMBSN.md` §1.
"""

import numpy as np


def _central(k: int) -> np.ndarray:
    m = np.ones((k, k), np.float32)
    m[k // 2, k // 2] = 0
    return m


def _x_shape(k: int) -> np.ndarray:
    m = np.ones((k, k), np.float32)
    idx = np.arange(k)
    m[idx, idx] = 0
    m[idx, k - 1 - idx] = 0
    return m


def _anti_diagonal(k: int) -> np.ndarray:
    m = np.ones((k, k), np.float32)
    idx = np.arange(k)
    m[k - 1 - idx, idx] = 0
    return m


_PATTERNS = {"central": _central, "x": _x_shape, "a45": _anti_diagonal}

MASK_KINDS = tuple(_PATTERNS)


def blind_spot_mask(kind: str, k: int) -> np.ndarray:
    """The (k, k) float32 0/1 mask of pattern `kind` (one of MASK_KINDS)."""
    if kind not in _PATTERNS:
        raise ValueError(f"unknown mask kind {kind!r}; known: {', '.join(MASK_KINDS)}")
    return _PATTERNS[kind](k)

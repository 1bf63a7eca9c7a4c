"""Blind-spot mask patterns for the masked first convolution of each branch.

A mask is a (k, k) 0/1 array indexed [row][col]; 0 marks a blind tap. The patterns are
those of the releases: "central" (AP-BSN, AM-BSN, MM-BSN's "o"), "x" (AM-BSN; MM-BSN's
"fcha"), the other MM-BSN kinds (docs/release.md, "Blind-spot masks") and TM-BSN's "triu"
(docs/tmbsn.md).
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


def _diagonal(k: int) -> np.ndarray:
    return np.ones((k, k), np.float32) - np.eye(k, dtype=np.float32)


def _plus(k: int) -> np.ndarray:
    """MM-BSN's "sz": only the centre row and column see, the centre itself blind."""
    m = np.zeros((k, k), np.float32)
    m[k // 2, :] = 1
    m[:, k // 2] = 1
    m[k // 2, k // 2] = 0
    return m


def _plus_blind(k: int) -> np.ndarray:
    """MM-BSN's "fsz": the centre row and column blind."""
    m = np.ones((k, k), np.float32)
    m[k // 2, :] = 0
    m[:, k // 2] = 0
    return m


def _x_open(k: int) -> np.ndarray:
    """MM-BSN's "cha": only the two diagonals see, and not on the centre row."""
    m = 1 - _x_shape(k)
    m[k // 2, :] = 0
    return m


def _ring(k: int) -> np.ndarray:
    """MM-BSN's "hui": only the border sees (at 3x3, the central mask)."""
    m = np.zeros((k, k), np.float32)
    m[[0, -1], :] = 1
    m[:, [0, -1]] = 1
    return m


def _upper_triangle(k: int) -> np.ndarray:
    """TM-BSN's: taps on and above the diagonal see (the centre too); the shifts and rotations
    around the network make the blind spot."""
    return np.triu(np.ones((k, k), np.float32))


_PATTERNS = {
    "central": _central,
    "x": _x_shape,
    "a45": _anti_diagonal,
    "a135": _diagonal,
    "sz": _plus,
    "fsz": _plus_blind,
    "cha": _x_open,
    "hui": _ring,
    "triu": _upper_triangle,
}

MASK_KINDS = tuple(_PATTERNS)


def blind_spot_mask(kind: str, k: int) -> np.ndarray:
    """The (k, k) float32 0/1 mask of pattern `kind` (one of MASK_KINDS)."""
    if kind not in _PATTERNS:
        raise ValueError(f"unknown mask kind {kind!r}; known: {', '.join(MASK_KINDS)}")
    return _PATTERNS[kind](k)

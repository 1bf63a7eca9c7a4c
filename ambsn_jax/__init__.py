"""AM-BSN (Asymmetric Mask Blind-Spot Network) and its family in JAX / Flax NNX.

    import ambsn_jax
    clean = ambsn_jax.denoise(noisy)            # uint8 / uint16 / float, gray or colour
    model = ambsn_jax.load("AMBSN_orbax")       # reuse for many images

The library API is imported on first use, so command lines start without loading JAX.
"""

from __future__ import annotations

from typing import Any

from ambsn_jax.version import __version__

__all__ = ["denoise", "load", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("denoise", "load", "ImageDenoiser"):
        from ambsn_jax import api

        return getattr(api, name)
    raise AttributeError(f"module 'ambsn_jax' has no attribute {name!r}")

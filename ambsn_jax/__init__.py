"""AM-BSN (Asymmetric Mask Blind-Spot Network) in JAX / Flax NNX."""

__version__ = "0.1.0"

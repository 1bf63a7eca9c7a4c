"""What every converter checks before it publishes: the release's PyTorch network and the JAX
model compute the same numbers from the same weights (docs/release.md, "Measured tolerances")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ambsn_jax.checkpoint import torch_port
from ambsn_jax.errors import UserError
from ambsn_jax.inference.release import pd_forward
from ambsn_jax.nets import registry

# The bound on raw outputs (0..255 scale); float32 against float64 noise is about 2e-4.
DEFAULT_TOLERANCE = 5e-3
VERIFY_SHAPE = (1, 3, 40, 40)  # NCHW; 40 divides by both PD factors; square, as TM-BSN's release needs
# TM-BSN's: 0 sees every pixel, 2 is the release's benchmark, 5 its training.
VERIFY_HOLES = (0, 1, 2, 5)


def reference_for(model: nnx.Module, state_dict: dict[str, np.ndarray]):
    """The release's `Denoiser` wrapper around its network of `model`'s config, holding
    `state_dict` (prefixed or bare), loaded with `strict=True`."""
    # Imported here, after read_pth has told a user without torch how to install it.
    import torch

    from ambsn_jax.convert.reference import ReleaseDenoiser, twin_of

    ref = ReleaseDenoiser(bsn=twin_of(model.config))
    stripped = torch_port.strip_prefixes(state_dict)
    ref.bsn.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in stripped.items()}, strict=True)
    return ref.eval()


def max_abs_diffs(model: nnx.Module, state_dict: dict[str, np.ndarray], seed: int = 0) -> dict[str, float]:
    """Max abs differences between `model` and the release's network holding `state_dict`.

    Both run the bsn alone, and the PD-2 and PD-5 forward, on one random 0..255 input; a
    network with a hole size (TM-BSN) runs at each of VERIFY_HOLES instead, the release's
    network on 0..1 as its code does.
    """
    import torch

    ref = reference_for(model, state_dict)
    x = np.random.default_rng(seed).uniform(0, 255, VERIFY_SHAPE).astype(np.float32)
    xt, xj = torch.from_numpy(x), jnp.asarray(x.transpose(0, 2, 3, 1))
    holes = "hole" in registry.of_config(model.config).release_inference
    with torch.no_grad():
        if holes:
            ref_out = {f"hole{h}": 255.0 * ref.bsn(xt / 255.0, h) for h in VERIFY_HOLES}
        else:
            ref_out = {"bsn": ref.bsn(xt), "pd2": ref(xt, pd=2), "pd5": ref(xt, pd=5)}
    # TF32 convolutions on GPUs alone move outputs by ~0.3: compare at full float32.
    with jax.default_matmul_precision("highest"):
        if holes:
            # One program for the four holes: eagerly, each of the network's ops compiles alone.
            outs = jax.jit(lambda v: model.forward_outs(v, VERIFY_HOLES))(xj)
            jax_out = {f"hole{h}": out for h, out in zip(VERIFY_HOLES, outs)}
        else:
            jax_out = {"bsn": model(xj), "pd2": pd_forward(model, xj, 2), "pd5": pd_forward(model, xj, 5)}
    return {
        name: float(np.max(np.abs(np.asarray(jax_out[name]) - ref_out[name].numpy().transpose(0, 2, 3, 1))))
        for name in ref_out
    }


def require_within(diffs: dict[str, float], tolerance: float, name: str, against: str) -> None:
    """Prints the differences; a UserError naming `name` if one exceeds `tolerance` or is NaN."""
    print(f"max abs diff vs {against} (tolerance {tolerance:g}):")
    for what, diff in diffs.items():
        print(f"  {what}: {diff:.3e}")
    # `not <=` so that a NaN fails too.
    failed = [f"{what} by {diff:.3e}" for what, diff in diffs.items() if not diff <= tolerance]
    if failed:
        raise UserError(f"{name}: verification failed: {', '.join(failed)} > {tolerance:g}; nothing written")

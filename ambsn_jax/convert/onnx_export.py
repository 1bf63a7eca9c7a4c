"""A checkpoint as two ONNX graphs, checked in onnxruntime against the JAX model.

`export_onnx` writes `model.onnx`, the blind-spot network alone, and `model_denoise.onnx`, the release's
PD inference without R3: PD-2 / PD-5 fusion for AM-BSN, PD 2 for AP-BSN and MM-BSN
(`inference.default_inference`); TM-BSN's network at the default inference's hole size and its
release's reflect-padded benchmark pass. Both take `x`, float32 NCHW on the 0..255 scale, of any
batch, height and width, and return `y` of the same shape; the PD graph pads to the PD factor
inside and crops back. R3 is a loop around the network graph (docs/export.md).

The graphs are exported from the PyTorch reference of the release loaded with the weights
that `flax2torch.params_to_state_dict` writes, by torch's own exporter (`torch.export`):
jax2onnx 0.17 drops the blind-spot masks (it exports `nnx.Conv` from its kernel, not through
our convolution), cannot export PD's reshapes with symbolic sizes, and pins orbax-checkpoint
below this project's. The reference is verified equal to the JAX model, and so is every
written graph: onnxruntime runs them at two sizes and batch sizes, and a difference above
`ONNX_TOLERANCE` from the JAX outputs leaves nothing written.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from ambsn_jax.checkpoint.store import Checkpoint
from ambsn_jax.convert.flax2torch import load_named, params_to_state_dict, refuse_existing
from ambsn_jax.convert.verify import require_within
from ambsn_jax.errors import UserError
from ambsn_jax.files import atomic_path
from ambsn_jax.inference.release import InferenceConfig, default_inference, denoise
from ambsn_jax.nets import registry

if TYPE_CHECKING:  # torch is an optional dependency, imported where it is used
    import torch

ONNX_TOLERANCE = 1e-2  # max abs diff from the JAX outputs, 0..255 scale
# (N, H, W): two batch sizes and sizes, the second odd and not a multiple of 5, so that the
# dynamic shapes and the PD graph's padding are both exercised.
CHECK_SHAPES = ((1, 40, 40), (2, 27, 34))
TRACE_SHAPE = (2, 3, 20, 20)  # NCHW; sizes of 1 would be specialised by torch.export


def denoise_graph_path(out: Path) -> Path:
    """`model.onnx` -> `model_denoise.onnx`, the PD inference beside the network."""
    return out.with_name(f"{out.stem}_denoise{out.suffix or '.onnx'}")


def pd_inference(meta: Any) -> InferenceConfig:
    """What the PD graph computes: the checkpoint's default inference without R3, one orientation
    (a caller averages rotations itself, as it runs R3 around the graph)."""
    return default_inference(meta, r3=False, self_ensemble=1)


def reference_for_export(params: Any, config: Any, pd_pad: int = 2) -> "torch.nn.Module":
    """The release's Denoiser holding the exported weights, ready for `torch.export`, padding
    its PD sub-images by `pd_pad` (the checkpoint's; the release's 2, a student's 0)."""
    import torch

    from ambsn_jax.convert.reference import MaskedConv2d, ReleaseDenoiser, twin_of

    ref = ReleaseDenoiser(bsn=twin_of(config), pd_pad=pd_pad)
    state = {k: torch.from_numpy(v) for k, v in params_to_state_dict(params, config).items()}
    # A bare state dict (NBSN's) holds the network's own keys, without the Denoiser's `bsn.`.
    (ref.bsn if registry.of_config(config).bare_state_dict else ref).load_state_dict(state, strict=True)
    for module in ref.modules():
        if isinstance(module, MaskedConv2d):
            # The release multiplies the mask into the weight in place at each forward;
            # torch.export refuses that write to a parameter. The exported weights are zero at
            # the blind taps already, so the plain convolution computes the same.
            module.forward = functools.partial(torch.nn.Conv2d.forward, module)
    return ref.eval()


def _reflect(x: "torch.Tensor", p: int) -> "torch.Tensor":
    """`F.pad(x, (p,) * 4, mode="reflect")` from slices: exported through `F.pad`, the padded
    sizes lost their link to the input's, and NBSN's graph failed at sizes other than the traced."""
    import torch

    x = torch.cat([x[..., 1 : p + 1].flip(-1), x, x[..., -p - 1 : -1].flip(-1)], dim=-1)
    return torch.cat([x[..., 1 : p + 1, :].flip(-2), x, x[..., -p - 1 : -1, :].flip(-2)], dim=-2)


def _pd_module(ref: "torch.nn.Module", cfg: InferenceConfig) -> "torch.nn.Module":
    """`inference.denoise` with R3 off, from the release's own PD forward and padding."""
    import torch

    class PDInference(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ref = ref

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p = cfg.reflect_pad  # NBSN's release reflects 16 pixels around its one pass
            if p:
                return self.fused(_reflect(x, p))[:, :, p:-p, p:-p]
            return self.fused(x)

        def fused(self, x: torch.Tensor) -> torch.Tensor:
            h, w = x.shape[-2:]
            # Both passes cropped: the release crops only PD-5's and fails on odd sizes.
            a = self.ref(self.ref._pad_to(x, cfg.pd_b), cfg.pd_b)[:, :, :h, :w]
            if not cfg.tta:
                return a
            b = self.ref(self.ref._pad_to(x, cfg.pd_a), cfg.pd_a)[:, :, :h, :w]
            return 0.2 * b + 0.8 * a

    return PDInference().eval()


def export_graph(module: "torch.nn.Module", path: Path) -> None:
    """`module` as an ONNX graph `x` -> `y` (NCHW) with dynamic batch, height and width."""
    import torch
    from torch.export import Dim

    dims = {0: Dim("batch"), 2: Dim("height"), 3: Dim("width")}
    x = torch.rand(TRACE_SHAPE) * 255
    with torch.no_grad():
        program = torch.onnx.export(
            module, (x,), dynamo=True, input_names=["x"], output_names=["y"],
            dynamic_shapes=(dims,), verbose=False,
        )  # fmt: skip
    program.save(str(path))


def hole_modules(params: Any, config: Any, cfg: InferenceConfig) -> tuple["torch.nn.Module", "torch.nn.Module"]:
    """TM-BSN's graphs: the network at the inference's hole size, on 0..255 and any size, and
    the release's benchmark pass around it (padding reflected)."""
    import torch

    from ambsn_jax.convert.reference import twin_of
    from ambsn_jax.convert.reference_tmbsn import OnScale, PaddedPass

    twin = twin_of(config)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in params_to_state_dict(params, config).items()}, strict=True)
    net = OnScale(twin.eval(), cfg.hole).eval()
    return net, PaddedPass(net, cfg.reflect_pad).eval()


def export_graphs(checkpoint: Checkpoint, bsn_path: Path, denoise_path: Path) -> None:
    """Write the network graph and the PD-inference graph of `checkpoint` (no verification)."""
    cfg = pd_inference(checkpoint.meta)
    if cfg.hole is not None:
        bsn, inference = hole_modules(checkpoint.params, checkpoint.meta.network_config(), cfg)
    else:
        ref = reference_for_export(checkpoint.params, checkpoint.meta.network_config(), cfg.pd_pad)
        bsn, inference = ref.bsn, _pd_module(ref, cfg)
    export_graph(bsn, bsn_path)
    export_graph(inference, denoise_path)


def onnx_max_abs_diffs(checkpoint: Checkpoint, bsn_path: Path, denoise_path: Path) -> dict[str, float]:
    """Max abs differences of the graphs in onnxruntime (CPU) from the JAX model, over CHECK_SHAPES."""
    import onnxruntime as ort

    cfg = pd_inference(checkpoint.meta)
    module = checkpoint.module()
    model = module if cfg.hole is None else functools.partial(module, hole=cfg.hole)
    # Jitted: run eagerly, each of the network's ops would be compiled on its own, for every shape.
    jax_fns = {"bsn": jax.jit(lambda x: model(x)), "denoise": jax.jit(lambda x: denoise(model, x, None, cfg))}
    sessions = {
        name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for name, path in (("bsn", bsn_path), ("denoise", denoise_path))
    }
    rng = np.random.default_rng(0)
    diffs = {}
    for n, h, w in CHECK_SHAPES:
        x = rng.uniform(0, 255, (n, 3, h, w)).astype(np.float32)
        for name, session in sessions.items():
            (got,) = session.run(None, {"x": x})
            # Full float32, as the reference comparisons (TF32 on GPUs moves outputs by ~0.3).
            with jax.default_matmul_precision("highest"):
                want = np.asarray(jax_fns[name](jnp.asarray(x.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
            if got.shape != want.shape:
                raise UserError(f"{name} graph: output {got.shape} for input {x.shape}, expected {want.shape}")
            key = f"{name} {n}x{h}x{w}"
            diffs[key] = float(np.max(np.abs(got - want)))
    return diffs


def export_onnx(ckpt: str | Path, out: str | Path, force: bool = False) -> Checkpoint:
    """Write `ckpt` as `out` (the network) and `denoise_graph_path(out)` (the PD inference).

    Raises UserError, with neither file written, if one exists (without `force`), the
    checkpoint is not one of the three releases' networks, or onnxruntime's outputs differ
    from the JAX model's by more than ONNX_TOLERANCE.
    """
    try:
        import onnxruntime  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        raise UserError(f"ONNX export needs torch, onnx and onnxruntime: pip install 'ambsn-jax[onnx]' ({e})") from e
    out = Path(out).absolute()
    denoise_out = denoise_graph_path(out)
    for path in (out, denoise_out):
        refuse_existing(path, force)
    checkpoint = load_named(ckpt)
    with atomic_path(out) as bsn_tmp, atomic_path(denoise_out) as denoise_tmp:
        try:
            export_graphs(checkpoint, bsn_tmp, denoise_tmp)
        except UserError as e:
            raise UserError(f"{ckpt}: {e}") from e
        diffs = onnx_max_abs_diffs(checkpoint, bsn_tmp, denoise_tmp)
        require_within(diffs, ONNX_TOLERANCE, str(ckpt), "JAX, onnxruntime on the CPU")
    return checkpoint

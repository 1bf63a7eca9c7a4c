"""Official PyTorch state dicts -> Flax NNX parameters, checked key by key.

The release's checkpoint (`../shared/spec/official_state_dict.tsv`) names every tensor of
`convert/reference.py`; this module maps each to a parameter of `ambsn_jax.model.AMBSN`,
refusing anything that does not fit. torch is imported only to read `.pth` files.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ambsn_jax.errors import UserError
from ambsn_jax.masks import blind_spot_mask
from ambsn_jax.model import AMBSN, AMBSNConfig

FlatParams = dict[tuple[str | int, ...], np.ndarray]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_error_reason(e: Exception) -> str:
    """The informative line of a torch.load error; torch opens with advice on trusting the file."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(boilerplate)]
    return f"{type(e).__name__}: {(useful or lines or ['no message'])[0]}"


def read_pth(path: str | Path) -> dict[str, np.ndarray]:
    """The state dict inside a `.pth` as float32 numpy arrays, loaded as untrusted input.

    Accepts the release's container `{'model_weight': {'denoiser': sd}}` or a bare state dict.
    """
    try:
        import torch
    except ImportError as e:
        raise UserError(
            f"{path}: reading .pth files needs PyTorch: pip install 'ambsn-jax[convert]'"
        ) from e
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            # Files not written by torch.save make torch warn about their pickle protocol;
            # the refusal below says all there is to say.
            warnings.simplefilter("ignore", UserWarning)
            # weights_only: a checkpoint from the internet must not be able to run code.
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # Either not a checkpoint at all, or one that holds more than tensors (code, maybe).
        raise UserError(
            f"{path}: not a checkpoint of plain tensors, refused to unpickle it ({_load_error_reason(e)})"
        ) from e
    except Exception as e:
        # Arbitrary bytes make torch's readers fail in arbitrary ways (KeyError on a text
        # file, EOFError on an empty one, RuntimeError on a truncated zip): all mean "not a
        # checkpoint", whatever the type.
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({_load_error_reason(e)})") from e
    if isinstance(obj, dict) and isinstance(obj.get("model_weight"), dict):
        obj = obj["model_weight"].get("denoiser", obj["model_weight"])
    if not isinstance(obj, dict) or not obj:
        raise UserError(f"{path}: holds no state dict (expected {{'model_weight': {{'denoiser': ...}}}})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{path}: entries that are not named tensors: {', '.join(map(str, bad[:5]))}")
    return {k: v.detach().to(torch.float32).numpy() for k, v in obj.items()}


def strip_prefixes(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop DataParallel's `module.` and the wrapper's `bsn.` prefixes, wherever present."""
    return {re.sub(r"^(module\.)?(bsn\.)?", "", k): v for k, v in sd.items()}


def _count(sd: dict[str, np.ndarray], pattern: str) -> int:
    return len({m.group(1) for k in sd if (m := re.fullmatch(pattern, k))})


def infer_config(sd: dict[str, np.ndarray]) -> AMBSNConfig:
    """Width and block counts of a stripped state dict, read off its shapes and keys."""
    head = sd.get("head.0.weight")
    if head is None or head.ndim != 4:
        raise UserError("state dict has no 4-D 'head.0.weight': not an AM-BSN checkpoint")
    tail = sd.get("tail.6.weight")
    # A DCl block counts if any of its tensors is there, so that a lost tensor is reported
    # as missing rather than silently shrinking the architecture.
    dcl1 = _count(sd, r"branch_local\.body\.(\d+)\.body\..+")
    dcl2 = _count(sd, r"dc_branchl2_local\.body\.(\d+)\.body\..+")
    return AMBSNConfig(
        in_ch=head.shape[1],
        base_ch=head.shape[0],
        out_ch=tail.shape[0] if tail is not None and tail.ndim == 4 else 3,
        dcl1_num=dcl1 or 2,
        dcl2_num=dcl2 or 7,
    )


def _conv_names(torch_prefix: str, flax_path: tuple[str | int, ...]) -> dict[str, tuple[str | int, ...]]:
    return {
        f"{torch_prefix}.weight": (*flax_path, "kernel"),
        f"{torch_prefix}.bias": (*flax_path, "bias"),
    }


def _dcl_names(torch_seq: str, flax_seq: tuple[str | int, ...], n: int) -> dict[str, tuple[str | int, ...]]:
    names = {}
    for i in range(n):
        names |= _conv_names(f"{torch_seq}.{i}.body.0", (*flax_seq, i, "dilated"))
        names |= _conv_names(f"{torch_seq}.{i}.body.2", (*flax_seq, i, "pointwise"))
    return names


def key_map(cfg: AMBSNConfig) -> dict[str, tuple[str | int, ...]]:
    """Torch key -> Flax parameter path. Shared modules appear under both torch names."""
    names = _conv_names("head.0", ("head",))
    for br in ("branch_local", "branch_global"):
        names |= _conv_names(f"{br}.head.0", (br, "masked"))
        names |= _conv_names(f"{br}.head.2", (br, "head1"))
        names |= _conv_names(f"{br}.head.4", (br, "head2"))
        names |= _conv_names(f"{br}.conv1_1.0", (br, "conv1_1"))
        names |= _conv_names(f"{br}.conv1_2.0", (br, "conv1_1"))
        names |= _dcl_names(f"{br}.body", (br, "body"), cfg.dcl1_num)
        names |= _conv_names(f"{br}.body.{cfg.dcl1_num}", (br, "body_out"))
        names |= _conv_names(f"{br}.conv1_3.0", (br, "conv1_3"))
    names |= _conv_names("conv2_1.0", ("conv2",))
    names |= _conv_names("conv2_2.0", ("conv2",))
    for side in ("local", "global"):
        names |= _dcl_names(f"dc_branchl2_{side}.body", (f"dcb2_{side}", "body"), cfg.dcl2_num)
        names |= _conv_names(f"dc_branchl2_{side}.body.{cfg.dcl2_num}", (f"dcb2_{side}", "out"))
    for i in range(4):
        names |= _conv_names(f"tail.{2 * i}", ("tail", "layers", i))
    return names


def mask_buffers(cfg: AMBSNConfig) -> dict[str, tuple[tuple[str | int, ...], np.ndarray]]:
    """Torch mask-buffer key -> (Flax kernel path, expected (k, k) pattern)."""
    return {
        "branch_local.head.0.mask": (("branch_local", "masked", "kernel"), blind_spot_mask(cfg.local_mask, 3)),
        "branch_global.head.0.mask": (("branch_global", "masked", "kernel"), blind_spot_mask(cfg.global_mask, 5)),
    }


def _to_flax(key: str, value: np.ndarray) -> np.ndarray:
    # Conv weights are OIHW in PyTorch, HWIO in Flax.
    return value.transpose(2, 3, 1, 0) if key.endswith(".weight") else value


def _torch_shape(key: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if key.endswith(".weight"):
        h, w, i, o = flax_shape
        return (o, i, h, w)
    return flax_shape


def state_dict_to_params(
    sd: dict[str, np.ndarray], cfg: AMBSNConfig, expected_shapes: FlatParams
) -> FlatParams:
    """Map a stripped state dict onto Flax parameter paths, refusing any mismatch.

    `expected_shapes` maps each Flax path to an array of the model's shape (e.g. the
    model's own flat state). The masks are multiplied into the masked kernels, as the
    release does at its first forward.
    """
    names = key_map(cfg)
    masks = mask_buffers(cfg)
    missing = sorted((set(names) | set(masks)) - set(sd))
    unexpected = sorted(set(sd) - set(names) - set(masks))
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    params: FlatParams = {}
    for key, path in names.items():
        if key not in sd:
            continue
        want = _torch_shape(key, expected_shapes[path].shape)
        if sd[key].shape != want:
            # Compared before transposing: a tensor of the wrong rank cannot be transposed.
            problems.append(f"{key}: shape {sd[key].shape}, expected {want}")
            continue
        value = _to_flax(key, sd[key])
        if path in params and not np.array_equal(params[path], value):
            problems.append(f"{key}: differs from the module it shares weights with")
        else:
            params[path] = value
    for key, (path, pattern) in masks.items():
        if key in sd:
            got = sd[key]
            if got.shape[-2:] != pattern.shape or not np.array_equal(got, np.broadcast_to(pattern, got.shape)):
                problems.append(f"{key}: not the expected blind-spot pattern")
        if path in params:
            params[path] = params[path] * pattern[:, :, None, None]
    if problems:
        raise UserError("; ".join(problems))
    return params


def model_from_state_dict(sd: dict[str, np.ndarray]) -> AMBSN:
    """An AM-BSN holding the weights of a (prefixed or bare) official state dict."""
    sd = strip_prefixes(sd)
    cfg = infer_config(sd)
    # Shapes only: every value is set below, and a random init costs seconds of compiling.
    model = nnx.eval_shape(lambda: AMBSN(cfg, rngs=nnx.Rngs(0)))
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    params = state_dict_to_params(sd, cfg, {path: var.get_value() for path, var in flat.items()})
    for path, var in flat.items():
        var.set_value(jnp.asarray(params[path]))
    return model

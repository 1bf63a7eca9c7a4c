"""The releases' PyTorch state dicts <-> Flax NNX parameters, checked key by key.

Which network a state dict holds is told by its keys (each `Architecture.signature`); each
network's record maps every tensor to a parameter, and anything that does not fit is refused.
torch is imported only to read `.pth` files.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ambsn_jax.nets.keymap import FlaxPath, StateDict
from ambsn_jax.errors import UserError
from ambsn_jax.nets import registry

FlatParams = dict[FlaxPath, np.ndarray]


def _load_error_reason(e: Exception) -> str:
    """The informative line of a torch.load error; torch opens with advice on trusting the file."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(boilerplate)]
    return f"{type(e).__name__}: {(useful or lines or ['no message'])[0]}"


def read_pth(path: str | Path) -> dict[str, np.ndarray]:
    """The state dict inside a `.pth` as float32 numpy arrays, loaded as untrusted input.

    Accepts the releases' container `{'model_weight': {'denoiser': sd}}` (anything beside
    `model_weight`, such as AP-BSN's `optimizer_weight`, is ignored) or a bare state dict.
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


def detect_arch(sd: StateDict) -> str:
    """The architecture name of a stripped state dict, from its branch keys."""
    found = [a for a in registry.ARCHITECTURES.values() if any(re.fullmatch(a.signature, k) for k in sd)]
    if len(found) != 1:
        names = [a.display_name for a in registry.ARCHITECTURES.values()]
        known = " and ".join(a.display_name for a in found) if found else f"none of {', '.join(names)}"
        raise UserError(f"cannot tell the architecture: branch keys of {known} (name it with --arch)")
    return found[0].name


def infer_config(sd: StateDict, arch: str | None = None) -> Any:
    """Width and block counts of a stripped state dict of `arch` (default: detected), read
    off its shapes and keys."""
    return registry.get(arch or detect_arch(sd)).config_from_state_dict(sd)


def _to_flax(key: str, value: np.ndarray) -> np.ndarray:
    # Conv weights are OIHW in PyTorch, HWIO in Flax.
    return value.transpose(2, 3, 1, 0) if key.endswith(".weight") else value


def _torch_shape(key: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if key.endswith(".weight"):
        h, w, i, o = flax_shape
        return (o, i, h, w)
    return flax_shape


def state_dict_to_params(sd: StateDict, cfg: Any, expected_shapes: FlatParams) -> FlatParams:
    """Map a stripped state dict onto Flax parameter paths, refusing any mismatch.

    `expected_shapes` maps each Flax path to an array of the model's shape (e.g. the
    model's own flat state). The masks are multiplied into the masked kernels, as the
    releases do at their first forward.
    """
    record = registry.of_config(cfg)
    names, masks = record.key_map(cfg), record.mask_map(cfg)
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


def params_from_state_dict(sd: StateDict, arch: str | None = None) -> tuple[dict, Any]:
    """The parameters (a pure dict, the checkpoint's `params` tree) and the typed network config
    of a (prefixed or bare) official state dict of `arch` (default: told by its keys)."""
    sd = strip_prefixes(sd)
    arch = arch or detect_arch(sd)
    cfg = infer_config(sd, arch)
    abstract = nnx.eval_shape(lambda: registry.build(arch, cfg))
    flat = dict(nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
    params = state_dict_to_params(sd, cfg, {path: var.get_value() for path, var in flat.items()})
    for path, var in flat.items():
        var.set_value(jnp.asarray(params[path]))
    return nnx.to_pure_dict(nnx.state(abstract, nnx.Param)), cfg

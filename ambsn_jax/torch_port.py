"""Official PyTorch state dicts -> Flax NNX parameters, checked key by key.

The releases' checkpoints (`../shared/spec/*_state_dict.tsv`) name every tensor of
`convert/reference.py`; this module tells which architecture of `ambsn_jax.family` a state
dict holds, and maps each tensor to a parameter of that network, refusing anything that does
not fit. torch is imported only to read `.pth` files.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ambsn_jax import family
from ambsn_jax.errors import UserError
from ambsn_jax.family import (
    MM_KINDS,
    APBSNConfig,
    MMBSNConfig,
    Model,
    ModelConfig,
    mm_branch_names,
)
from ambsn_jax.masks import blind_spot_mask
from ambsn_jax.model import AMBSNConfig

StateDict = dict[str, np.ndarray]
FlaxPath = tuple[str | int, ...]
FlatParams = dict[FlaxPath, np.ndarray]
KeyMap = dict[str, FlaxPath]
MaskMap = dict[str, tuple[FlaxPath, np.ndarray]]


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


def _count(sd: StateDict, pattern: str) -> int:
    """How many blocks `pattern` finds (group 1: the block index).

    A block counts if any of its tensors is there, so that a lost tensor is reported as
    missing rather than silently shrinking the architecture; where none is found, callers
    take the release's count, whose keys are then reported missing.
    """
    return len({m.group(1) for k in sd if (m := re.fullmatch(pattern, k))})


def _widths(sd: StateDict, arch: str) -> dict[str, int]:
    """in_ch, base_ch and out_ch, read off the head and the tail."""
    head = sd.get("head.0.weight")
    if head is None or head.ndim != 4:
        raise UserError(f"state dict has no 4-D 'head.0.weight': not an {_NAMES[arch]} checkpoint")
    tail = sd.get("tail.6.weight")
    out_ch = tail.shape[0] if tail is not None and tail.ndim == 4 else 3
    return {"in_ch": head.shape[1], "base_ch": head.shape[0], "out_ch": out_ch}


def _ambsn_config(sd: StateDict) -> AMBSNConfig:
    dcl1 = _count(sd, r"branch_local\.body\.(\d+)\.body\..+")
    dcl2 = _count(sd, r"dc_branchl2_local\.body\.(\d+)\.body\..+")
    return AMBSNConfig(**_widths(sd, "ambsn"), dcl1_num=dcl1 or 2, dcl2_num=dcl2 or 7)


def _apbsn_config(sd: StateDict) -> APBSNConfig:
    n = _count(sd, r"branch1\.body\.(\d+)\.body\..+")
    return APBSNConfig(**_widths(sd, "apbsn"), num_module=n or 9)


_MM_KIND_OF_NUMBER = {n: kind for kind, (n, _) in MM_KINDS.items()}


def _mmbsn_config(sd: StateDict) -> MMBSNConfig:
    numbers = {int(m.group(1)) for k in sd if (m := re.match(r"branch(\d+)_[12]\.", k))}
    # A branch number of no kind is left out here and its keys are refused as unexpected.
    present = {_MM_KIND_OF_NUMBER[n] for n in numbers if n in _MM_KIND_OF_NUMBER}
    if not present:
        raise UserError("state dict has no MM-BSN branch (branchN_1 / branchN_2)")
    dcl1 = _count(sd, r"branch\d+_[12]\.body\.(\d+)\.body\..+")
    dcl2 = _count(sd, r"dc_branchl2_mask3\.body\.(\d+)\.body\..+")
    # Written in branch order; the network does not depend on the order anyway.
    mask_type = "_".join(kind for kind in MM_KINDS if kind in present)
    return MMBSNConfig(**_widths(sd, "mmbsn"), dcl1_num=dcl1 or 2, dcl2_num=dcl2 or 7, mask_type=mask_type)


def _conv_names(torch_prefix: str, flax_path: FlaxPath) -> KeyMap:
    return {
        f"{torch_prefix}.weight": (*flax_path, "kernel"),
        f"{torch_prefix}.bias": (*flax_path, "bias"),
    }


def _dcl_names(torch_seq: str, flax_seq: FlaxPath, n: int, offset: int = 0) -> KeyMap:
    """DCl blocks at torch_seq.{offset}..{offset+n-1} -> flax_seq[0..n-1]."""
    names = {}
    for i in range(n):
        names |= _conv_names(f"{torch_seq}.{offset + i}.body.0", (*flax_seq, i, "dilated"))
        names |= _conv_names(f"{torch_seq}.{offset + i}.body.2", (*flax_seq, i, "pointwise"))
    return names


def _dcb2_names(torch_seq: str, flax_path: FlaxPath, n: int, offset: int = 0) -> KeyMap:
    """A `model.DCB2` whose blocks start at torch_seq.{offset}, its 1x1 conv right after them."""
    names = _dcl_names(torch_seq, (*flax_path, "body"), n, offset)
    return names | _conv_names(f"{torch_seq}.{offset + n}", (*flax_path, "out"))


def _dcb1_names(torch_prefix: str, flax_path: FlaxPath, n: int) -> KeyMap:
    """A `model.DCB1`; its shared conv1_1 / conv1_2 both map to the one parameter."""
    p = torch_prefix
    names = _conv_names(f"{p}.head.0", (*flax_path, "masked"))
    names |= _conv_names(f"{p}.head.2", (*flax_path, "head1"))
    names |= _conv_names(f"{p}.head.4", (*flax_path, "head2"))
    names |= _conv_names(f"{p}.conv1_1.0", (*flax_path, "conv1_1"))
    names |= _conv_names(f"{p}.conv1_2.0", (*flax_path, "conv1_1"))
    names |= _dcl_names(f"{p}.body", (*flax_path, "body"), n)
    names |= _conv_names(f"{p}.body.{n}", (*flax_path, "body_out"))
    return names | _conv_names(f"{p}.conv1_3.0", (*flax_path, "conv1_3"))


def _head_tail_names() -> KeyMap:
    names = _conv_names("head.0", ("head",))
    for i in range(4):
        names |= _conv_names(f"tail.{2 * i}", ("tail", "layers", i))
    return names


def _ambsn_keys(cfg: AMBSNConfig) -> KeyMap:
    names = _head_tail_names()
    for br in ("branch_local", "branch_global"):
        names |= _dcb1_names(br, (br,), cfg.dcl1_num)
    names |= _conv_names("conv2_1.0", ("conv2",))
    names |= _conv_names("conv2_2.0", ("conv2",))
    for side in ("local", "global"):
        names |= _dcb2_names(f"dc_branchl2_{side}.body", (f"dcb2_{side}",), cfg.dcl2_num)
    return names


def _apbsn_keys(cfg: APBSNConfig) -> KeyMap:
    names = _head_tail_names()
    for br in ("branch1", "branch2"):
        # One Sequential: masked conv, 1x1, 1x1 (each followed by a ReLU), then the DCl blocks.
        names |= _conv_names(f"{br}.body.0", (br, "masked"))
        names |= _conv_names(f"{br}.body.2", (br, "head1"))
        names |= _conv_names(f"{br}.body.4", (br, "head2"))
        names |= _dcb2_names(f"{br}.body", (br, "body"), cfg.num_module, offset=6)
    return names


def _mmbsn_keys(cfg: MMBSNConfig) -> KeyMap:
    names = _head_tail_names()
    for kind in cfg.kinds():
        for br in mm_branch_names(kind):
            names |= _dcb1_names(br, (br,), cfg.dcl1_num)
    names |= _conv_names("conv2_1.0", ("conv2",))
    names |= _conv_names("conv2_2.0", ("conv2",))
    for size in ("mask3", "mask5"):
        names |= _dcb2_names(f"dc_branchl2_{size}.body", (f"dcb2_{size}",), cfg.dcl2_num)
    return names


def _mask(torch_conv: str, flax_conv: FlaxPath, kind: str, k: int) -> MaskMap:
    return {f"{torch_conv}.mask": ((*flax_conv, "kernel"), blind_spot_mask(kind, k))}


def _ambsn_masks(cfg: AMBSNConfig) -> MaskMap:
    return _mask("branch_local.head.0", ("branch_local", "masked"), cfg.local_mask, 3) | _mask(
        "branch_global.head.0", ("branch_global", "masked"), cfg.global_mask, 5
    )


def _apbsn_masks(cfg: APBSNConfig) -> MaskMap:
    return _mask("branch1.body.0", ("branch1", "masked"), "central", 3) | _mask(
        "branch2.body.0", ("branch2", "masked"), "central", 5
    )


def _mmbsn_masks(cfg: MMBSNConfig) -> MaskMap:
    masks: MaskMap = {}
    for kind in cfg.kinds():
        name3, name5 = mm_branch_names(kind)
        pattern = MM_KINDS[kind][1]
        masks |= _mask(f"{name3}.head.0", (name3, "masked"), pattern, 3)
        masks |= _mask(f"{name5}.head.0", (name5, "masked"), pattern, 5)
    return masks


@dataclasses.dataclass(frozen=True)
class _Port:
    """How one architecture's state dicts map onto its Flax network."""

    name: str  # as people write it, for messages
    signature: str  # a key pattern that only this architecture's state dicts have
    infer_config: Callable[[StateDict], ModelConfig]
    key_map: Callable[[ModelConfig], KeyMap]
    mask_buffers: Callable[[ModelConfig], MaskMap]


_PORTS = {
    "ambsn": _Port("AM-BSN", r"branch_(local|global)\..+", _ambsn_config, _ambsn_keys, _ambsn_masks),
    "apbsn": _Port("AP-BSN", r"branch[12]\.body\..+", _apbsn_config, _apbsn_keys, _apbsn_masks),
    "mmbsn": _Port("MM-BSN", r"branch\d+_[12]\..+", _mmbsn_config, _mmbsn_keys, _mmbsn_masks),
}
_NAMES = {arch: port.name for arch, port in _PORTS.items()}


def detect_arch(sd: StateDict) -> str:
    """The architecture ("ambsn", "apbsn", "mmbsn") of a stripped state dict, from its branch keys."""
    found = [arch for arch, port in _PORTS.items() if any(re.fullmatch(port.signature, k) for k in sd)]
    if len(found) != 1:
        known = " and ".join(_NAMES[a] for a in found) if found else "none of AM-BSN, AP-BSN or MM-BSN"
        raise UserError(f"cannot tell the architecture: branch keys of {known} (name it with --arch)")
    return found[0]


def _port(arch: str) -> _Port:
    if arch not in _PORTS:
        raise UserError(f"unknown architecture {arch!r}; known: {', '.join(_PORTS)}")
    return _PORTS[arch]


def infer_config(sd: StateDict, arch: str | None = None) -> ModelConfig:
    """Width and block counts of a stripped state dict of `arch` (default: detected), read
    off its shapes and keys."""
    return _port(arch or detect_arch(sd)).infer_config(sd)


def key_map(cfg: ModelConfig) -> KeyMap:
    """Torch key -> Flax parameter path. Shared modules appear under both torch names."""
    return _PORTS[family.arch_of(cfg)].key_map(cfg)


def mask_buffers(cfg: ModelConfig) -> MaskMap:
    """Torch mask-buffer key -> (Flax kernel path, expected (k, k) pattern)."""
    return _PORTS[family.arch_of(cfg)].mask_buffers(cfg)


def _to_flax(key: str, value: np.ndarray) -> np.ndarray:
    # Conv weights are OIHW in PyTorch, HWIO in Flax.
    return value.transpose(2, 3, 1, 0) if key.endswith(".weight") else value


def _torch_shape(key: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if key.endswith(".weight"):
        h, w, i, o = flax_shape
        return (o, i, h, w)
    return flax_shape


def state_dict_to_params(sd: StateDict, cfg: ModelConfig, expected_shapes: FlatParams) -> FlatParams:
    """Map a stripped state dict onto Flax parameter paths, refusing any mismatch.

    `expected_shapes` maps each Flax path to an array of the model's shape (e.g. the
    model's own flat state). The masks are multiplied into the masked kernels, as the
    releases do at their first forward.
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


def model_from_state_dict(sd: StateDict, arch: str | None = None) -> Model:
    """The network of `arch` (default: detected from the keys) holding the weights of a
    (prefixed or bare) official state dict."""
    sd = strip_prefixes(sd)
    arch = arch or detect_arch(sd)
    cfg = infer_config(sd, arch)
    # Shapes only: every value is set below, and a random init costs seconds of compiling.
    model = nnx.eval_shape(lambda: family.build(arch, cfg.to_dict(), nnx.Rngs(0)))
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    params = state_dict_to_params(sd, cfg, {path: var.get_value() for path, var in flat.items()})
    for path, var in flat.items():
        var.set_value(jnp.asarray(params[path]))
    return model

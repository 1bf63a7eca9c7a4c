"""PyTorch reference of the AM-BSN, AP-BSN, MM-BSN and TM-BSN releases: module names, forward, PD,
TTA, R3; and the PyTorch twin of this project's own distilled student (`Student`).

Written from what the releases compute (docs/release.md) so that `load_state_dict(strict=True)`
takes an official state dict of each and the numbers are the releases'. It is the yardstick of
the JAX port (tests, the converters' verification, `bench/`) and needs torch, so nothing of the
JAX side imports it except to verify. The releases' bugs are kept here on purpose (R3 with TTA off returns the padded
size; TTA crashes on odd sizes; MM-BSN's "c" and "r" get centre masks): the port fixes the
first two and the tests compare on sizes where both agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ambsn_jax.convert.reference_nbsn import NBSN
from ambsn_jax.convert.reference_tmbsn import TMBSN
from ambsn_jax.errors import UserError
from ambsn_jax.nets import registry

CENTRAL_3 = [[1, 1, 1], [1, 0, 1], [1, 1, 1]]
X_5 = [
    [0, 1, 1, 1, 0],
    [1, 0, 1, 0, 1],
    [1, 1, 0, 1, 1],
    [1, 0, 1, 0, 1],
    [0, 1, 1, 1, 0],
]


class MaskedConv2d(nn.Conv2d):
    """The release's masked conv: the mask is a buffer, multiplied into the weight in place."""

    def __init__(self, in_ch: int, out_ch: int, pattern: list[list[int]] | torch.Tensor):
        k = len(pattern)
        super().__init__(in_ch, out_ch, k, padding=k // 2)
        mask = torch.as_tensor(pattern, dtype=torch.float32)
        self.register_buffer("mask", mask.expand(out_ch, in_ch, k, k).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.weight.data *= self.mask
        return super().forward(x)


def release_mask(name: str, k: int) -> torch.Tensor:
    """The (k, k) mask that MM-BSN's branch builds for the mask `name` it is given.

    A name the branch does not recognise gets the centre mask (AP-BSN's only one): so do the
    "col" and "row" that MM-BSN passes for its kinds "c" and "r".
    """
    m = torch.ones(k, k)
    mid = k // 2
    if name == "sz":
        m.zero_()
        m[:, mid] = 1
        m[mid, :] = 1
        m[mid, mid] = 0
    elif name == "fsz":
        m[:, mid] = 0
        m[mid, :] = 0
    elif name == "a45":
        for i in range(k):
            m[k - 1 - i, i] = 0
    elif name == "a135":
        for i in range(k):
            m[i, i] = 0
    elif name == "cha":
        m.zero_()
        for i in range(k):
            m[i, i] = 1
            m[k - 1 - i, i] = 1
        m[mid, :] = 0
    elif name == "fcha":
        for i in range(k):
            m[i, i] = 0
            m[k - 1 - i, i] = 0
    elif name == "hui":
        m[1:-1, 1:-1] = 0
    else:
        m[mid, mid] = 0
    return m


class DCl(nn.Module):
    def __init__(self, stride: int, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, padding=stride, dilation=stride),
            nn.ReLU(inplace=True),
            nn.Conv2d(ch, ch, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class DCB1(nn.Module):
    def __init__(self, stride: int, ch: int, pattern: list[list[int]] | torch.Tensor, num_dcl: int = 2):
        super().__init__()
        self.head = nn.Sequential(
            MaskedConv2d(ch, ch, pattern), nn.ReLU(inplace=True),
            nn.Conv2d(ch, ch, 1), nn.ReLU(inplace=True),
            nn.Conv2d(ch, ch, 1), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.conv1_1 = nn.Sequential(nn.Conv2d(ch, ch, 1), nn.ReLU(inplace=True))
        self.conv1_2 = self.conv1_1  # the release shares the module
        layers = [DCl(stride, ch) for _ in range(num_dcl)]
        self.body = nn.Sequential(*layers, nn.Conv2d(ch, ch, 1), nn.ReLU(inplace=True))
        self.conv1_3 = nn.Sequential(nn.Conv2d(2 * ch, ch, 1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y0 = self.head(x)
        c11 = self.conv1_1(y0)
        y1 = self.body(c11)
        cat = self.conv1_3(torch.cat([c11, y1], dim=1))
        return self.conv1_2(y0), cat


class DCB2(nn.Module):
    def __init__(self, stride: int, ch: int, num_dcl: int = 7):
        super().__init__()
        layers = [DCl(stride, ch) for _ in range(num_dcl)]
        self.body = nn.Sequential(*layers, nn.Conv2d(ch, ch, 1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def tail(cin: int, c: int, out_ch: int) -> nn.Sequential:
    """The releases' `tail`: 1x1 convs cin -> C -> C/2 -> C/2 -> out_ch, ReLU between them."""
    return nn.Sequential(
        nn.Conv2d(cin, c, 1), nn.ReLU(inplace=True),
        nn.Conv2d(c, c // 2, 1), nn.ReLU(inplace=True),
        nn.Conv2d(c // 2, c // 2, 1), nn.ReLU(inplace=True),
        nn.Conv2d(c // 2, out_ch, 1),
    )  # fmt: skip


class AMBSN(nn.Module):
    """The release's `bsn`: the names here are the keys of an official state dict."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, base_ch: int = 128):
        super().__init__()
        c = base_ch
        self.head = nn.Sequential(nn.Conv2d(in_ch, c, 1), nn.ReLU(inplace=True))
        self.branch_local = DCB1(2, c, CENTRAL_3)
        self.branch_global = DCB1(3, c, X_5)
        self.conv2_1 = nn.Sequential(nn.Conv2d(c, c, 1), nn.ReLU(inplace=True))
        self.conv2_2 = self.conv2_1
        self.dc_branchl2_local = DCB2(2, c)
        self.dc_branchl2_global = DCB2(3, c)
        self.tail = tail(4 * c, c, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        local_fm, local_cat = self.branch_local(x)
        global_fm, global_cat = self.branch_global(x)
        g_local = self.dc_branchl2_local(self.conv2_1(local_cat))
        g_global = self.dc_branchl2_global(self.conv2_2(global_cat))
        return self.tail(torch.cat([local_fm, global_fm, g_global, g_local], dim=1))


class DBSNBranch(nn.Module):
    """AP-BSN's branch (`DC_branchl`): everything in one Sequential `body`."""

    def __init__(self, stride: int, ch: int, num_module: int):
        super().__init__()
        self.body = nn.Sequential(
            MaskedConv2d(ch, ch, release_mask("central", 2 * stride - 1)), nn.ReLU(inplace=True),
            nn.Conv2d(ch, ch, 1), nn.ReLU(inplace=True),
            nn.Conv2d(ch, ch, 1), nn.ReLU(inplace=True),
            *[DCl(stride, ch) for _ in range(num_module)],
            nn.Conv2d(ch, ch, 1), nn.ReLU(inplace=True),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class DBSNl(nn.Module):
    """AP-BSN's `bsn`."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, base_ch: int = 128, num_module: int = 9):
        super().__init__()
        c = base_ch
        self.head = nn.Sequential(nn.Conv2d(in_ch, c, 1), nn.ReLU(inplace=True))
        self.branch1 = DBSNBranch(2, c, num_module)
        self.branch2 = DBSNBranch(3, c, num_module)
        self.tail = tail(2 * c, c, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        return self.tail(torch.cat([self.branch1(x), self.branch2(x)], dim=1))


# MM-BSN's kinds in the order its forward visits them: (kind, N of `branchN_1` / `branchN_2`,
# the mask name its constructor passes to the branch).
MM_BRANCHES = [
    ("o", 1, "central"), ("c", 2, "col"), ("r", 3, "row"), ("sz", 4, "sz"), ("fsz", 5, "fsz"),
    ("a45", 6, "a45"), ("a135", 7, "a135"), ("cha", 9, "cha"), ("fcha", 10, "fcha"), ("hui", 8, "hui"),
]  # fmt: skip


class MMBSN(nn.Module):
    """MM-BSN's `bsn`; the argument names are the Flax config's."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, base_ch: int = 128, dcl1_num: int = 2,
                 dcl2_num: int = 7, mask_type: str = "o_a45"):  # fmt: skip
        super().__init__()
        c = base_ch
        kinds = mask_type.split("_")
        self.head = nn.Sequential(nn.Conv2d(in_ch, c, 1), nn.ReLU(inplace=True))
        self.visit = [n for kind, n, _ in MM_BRANCHES if kind in kinds]
        for kind, n, mask_name in MM_BRANCHES:
            if kind in kinds:
                setattr(self, f"branch{n}_1", DCB1(2, c, release_mask(mask_name, 3), dcl1_num))
                setattr(self, f"branch{n}_2", DCB1(3, c, release_mask(mask_name, 5), dcl1_num))
        self.conv2_1 = nn.Sequential(nn.Conv2d(len(kinds) * c, c, 1), nn.ReLU(inplace=True))
        self.conv2_2 = self.conv2_1
        self.dc_branchl2_mask3 = DCB2(2, c, dcl2_num)
        self.dc_branchl2_mask5 = DCB2(3, c, dcl2_num)
        self.tail = tail((2 + 2 * len(kinds)) * c, c, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        e, y1, y2 = [], [], []
        for n in self.visit:
            e1, b1 = getattr(self, f"branch{n}_1")(x)
            e2, b2 = getattr(self, f"branch{n}_2")(x)
            e += [e1, e2]
            y1.append(b1)
            y2.append(b2)
        m3 = self.dc_branchl2_mask3(self.conv2_1(torch.cat(y1, dim=1)))
        m5 = self.dc_branchl2_mask5(self.conv2_2(torch.cat(y2, dim=1)))
        return self.tail(torch.cat([*e, m3, m5], dim=1))


class Student(nn.Module):
    """`ambsn_jax.nets.student.Student` in PyTorch, with the same keys as its key map."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, base_ch: int = 32, depth: int = 3, blocks: int = 2):
        super().__init__()
        w = [base_ch * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.head = nn.Conv2d(in_ch, w[0], 3, padding=1)
        self.enc = nn.ModuleList(
            nn.ModuleList(nn.Conv2d(w[max(i - 1, 0)] if j == 0 else w[i], w[i], 3, padding=1) for j in range(blocks))
            for i in range(depth + 1)
        )
        self.up = nn.ModuleList(nn.Conv2d(w[i + 1], w[i], 1) for i in range(depth))
        self.dec = nn.ModuleList(
            nn.ModuleList(nn.Conv2d(w[i], w[i], 3, padding=1) for _ in range(blocks)) for i in range(depth)
        )
        self.tail = nn.Conv2d(w[0], out_ch, 3, padding=1)

    @staticmethod
    def _run(stack: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for layer in stack:
            x = F.relu(layer(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2**self.depth
        x = F.pad(x, (0, -w % m, 0, -h % m), mode="replicate")
        f = self._run(self.enc[0], F.relu(self.head(x / 255.0)))
        skips = []
        for stack in self.enc[1:]:
            skips.append(f)
            f = self._run(stack, F.avg_pool2d(f, 2))
        for i in reversed(range(self.depth)):
            up = self.up[i](f).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
            f = self._run(self.dec[i], skips[i] + up)
        return (x + 255.0 * self.tail(f))[:, :, :h, :w]


def _release_ambsn(cfg: Any) -> nn.Module:
    # The release hard-codes its blocks and masks, so only the widths can vary.
    release = type(cfg)(in_ch=cfg.in_ch, out_ch=cfg.out_ch, base_ch=cfg.base_ch)
    if cfg != release:
        raise UserError(f"architecture {cfg} is not the release's ({release}), so its reference cannot verify it")
    return AMBSN(cfg.in_ch, cfg.out_ch, cfg.base_ch)


# Registry name -> the PyTorch twin of a typed config of that network.
TWINS: dict[str, Callable[[Any], nn.Module]] = {
    "ambsn": _release_ambsn,
    "apbsn": lambda cfg: DBSNl(**cfg.to_dict()),
    "mmbsn": lambda cfg: MMBSN(**cfg.to_dict()),
    "student": lambda cfg: Student(**cfg.to_dict()),
    "nbsn": lambda cfg: NBSN(**cfg.to_dict()),
    "tmbsn": lambda cfg: TMBSN(**cfg.to_dict()),
}


def twin_of(cfg: Any) -> nn.Module:
    """The release's PyTorch network (for the student: its twin) of the typed network config `cfg`,
    chosen by the registry record `cfg` belongs to."""
    return TWINS[registry.of_config(cfg).name](cfg)


def pixel_shuffle_down_sampling(x: torch.Tensor, f: int, pad: int = 0) -> torch.Tensor:
    b, c, h, w = x.shape
    unshuffled = F.pixel_unshuffle(x, f)
    if pad:
        unshuffled = F.pad(unshuffled, (pad, pad, pad, pad))
    hp, wp = h // f + 2 * pad, w // f + 2 * pad
    return (
        unshuffled.view(b, c, f, f, hp, wp)
        .permute(0, 1, 2, 4, 3, 5)
        .reshape(b, c, h + 2 * f * pad, w + 2 * f * pad)
    )


def pixel_shuffle_up_sampling(x: torch.Tensor, f: int, pad: int = 0) -> torch.Tensor:
    b, c, hm, wm = x.shape
    before = x.view(b, c, f, hm // f, f, wm // f).permute(0, 1, 2, 4, 3, 5)
    if pad:
        before = before[..., pad:-pad, pad:-pad]
    before = before.reshape(b, c * f * f, hm // f - 2 * pad, wm // f - 2 * pad)
    return F.pixel_shuffle(before, f)


class ReleaseDenoiser(nn.Module):
    """The release's wrapper (`model_weight['denoiser']`): PD forward and `denoise`.

    It holds AM-BSN of width `base_ch`, or the network `bsn`. With `tta=False` it is AP-BSN's
    and MM-BSN's wrapper, which have no PD-5 fusion.
    """

    def __init__(self, base_ch: int = 128, pd_a: int = 5, pd_b: int = 2, pd_pad: int = 2,
                 R3: bool = True, R3_T: int = 8, R3_p: float = 0.16, tta: bool = True,
                 bsn: nn.Module | None = None):  # fmt: skip
        super().__init__()
        self.pd_a, self.pd_b, self.pd_pad = pd_a, pd_b, pd_pad
        self.R3, self.R3_T, self.R3_p, self.tta = R3, R3_T, R3_p, tta
        self.bsn = AMBSN(base_ch=base_ch) if bsn is None else bsn

    def forward(self, img: torch.Tensor, pd: int | None = None) -> torch.Tensor:
        pd = self.pd_a if pd is None else pd
        p = self.pd_pad
        if pd > 1:
            return pixel_shuffle_up_sampling(
                self.bsn(pixel_shuffle_down_sampling(img, pd, p)), pd, p
            )
        out = self.bsn(F.pad(img, (p, p, p, p)))
        return out[:, :, p:-p, p:-p] if p else out

    @staticmethod
    def _pad_to(x: torch.Tensor, m: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        return F.pad(x, (0, -w % m, 0, -h % m))

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """The release's `denoise`; `masks` (T, *x.shape) replaces torch.rand_like draws."""
        h, w = x.shape[-2:]
        if self.tta:
            a = self.forward(self._pad_to(x, self.pd_b), self.pd_b)
            b = self.forward(self._pad_to(x, self.pd_a), self.pd_a)[:, :, :h, :w]
            y = 0.2 * b + 0.8 * a  # as released: fails unless h and w divide by pd_b
        else:
            x = self._pad_to(x, self.pd_b)
            y = self.forward(x, self.pd_b)
            if not self.R3:
                return y[:, :, :h, :w]
        if not self.R3:
            return y
        p = self.pd_pad
        outs = []
        for t in range(self.R3_T):
            mask = masks[t] if masks is not None else torch.rand_like(x) < self.R3_p
            z = y.clone()
            z[mask] = x[mask]
            z = F.pad(z, (p, p, p, p), mode="reflect")
            o = self.bsn(z)
            outs.append(o[:, :, p:-p, p:-p] if p else o)
        return torch.stack(outs, dim=-1).mean(dim=-1)  # padded size when TTA is off

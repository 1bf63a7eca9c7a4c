"""PyTorch twin of the TM-BSN release's network (`model/TMBSN.py`), in its module names.

Its own words, the release's structure: `load_state_dict(strict=True)` takes a release checkpoint
(a bare state dict, masks included) and the forward is the release's, on 0..1 NCHW inputs that
must be square (the four rotations share the batch axis). `reference.TWINS` serves it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class TriangleConv2d(nn.Conv2d):
    """TM-BSN's masked 3x3 conv: an upper-triangular mask (centre kept) held as a buffer and
    multiplied into the weight at every forward, the stored weight left as it is."""

    def __init__(self, in_ch: int, out_ch: int, k: int = 3):
        super().__init__(in_ch, out_ch, k, padding=k // 2)
        self.register_buffer("mask", torch.triu(torch.ones(k, k)).expand(out_ch, in_ch, k, k).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class TMResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = TriangleConv2d(ch, ch)
        self.conv2 = TriangleConv2d(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class TMRIRBlock(nn.Module):
    def __init__(self, n: int, ch: int):
        super().__init__()
        self.res_blocks = nn.ModuleList(TMResBlock(ch) for _ in range(n))
        self.conv_out = TriangleConv2d(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for block in self.res_blocks:
            h = block(h)
        return x + self.conv_out(h)


class TMBlindNet(nn.Module):
    def __init__(self, in_ch: int, ch: int, n: int):
        super().__init__()
        self.conv1 = TriangleConv2d(in_ch, ch)
        self.conv2 = TriangleConv2d(ch, ch)
        self.RIR_blocks = nn.ModuleList(TMRIRBlock(n, ch) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        h = x1
        for block in self.RIR_blocks:
            h = block(h)
        return x1 + self.conv2(h)


class TMBSN(nn.Module):
    """TM-BSN's network on 0..1 NCHW, square inputs only, as its release: the four rotations
    on the batch axis, one backbone pass, shifts by the hole, rotations undone onto channels."""

    def __init__(self, in_ch: int = 3, base_ch: int = 48, blocks: int = 5):
        super().__init__()
        c = base_ch
        self.unet = TMBlindNet(in_ch, c, blocks)
        self.nin_A = nn.Conv2d(8 * c, 8 * c, 1)
        self.nin_B = nn.Conv2d(8 * c, 2 * c, 1)
        self.nin_C = nn.Conv2d(2 * c, in_ch, 1)

    @staticmethod
    def rotations(x: torch.Tensor) -> torch.Tensor:
        turned = x.transpose(2, 3)
        return torch.cat([x, turned.flip(3), x.flip(2).flip(3), turned.flip(2)], dim=0)

    @staticmethod
    def unrotations(x: torch.Tensor) -> torch.Tensor:
        r0, r90, r180, r270 = torch.chunk(x, 4, dim=0)
        return torch.cat([r0, r90.transpose(2, 3).flip(2), r180.flip(2).flip(3), r270.transpose(2, 3).flip(3)], dim=1)

    @staticmethod
    def shifted(f: torch.Tensor, hole: int) -> torch.Tensor:
        if hole == 0:
            return torch.cat([f, f], dim=1)
        down = F.pad(f, (0, 0, hole, 0))[:, :, :-hole, :]
        left = F.pad(f, (0, hole, 0, 0))[:, :, :, hole:]
        return torch.cat([down, left], dim=1)

    def head(self, feats: torch.Tensor, hole: int) -> torch.Tensor:
        z = self.unrotations(self.shifted(feats, hole))
        return self.nin_C(F.relu(self.nin_B(F.relu(self.nin_A(z)))))

    def forward(self, x: torch.Tensor, hole_size: int = 1) -> torch.Tensor:
        return self.head(self.unet(self.rotations(x)), hole_size)

    @torch.no_grad()
    def forward_outs(self, x: torch.Tensor, h_set: Sequence[int]) -> list[torch.Tensor]:
        feats = self.unet(self.rotations(x))
        return [self.head(feats, h) for h in h_set]

    def forward_any(self, x: torch.Tensor, hole: int) -> torch.Tensor:
        """The port's forward (`nets.tmbsn.TMBSN`) on any H x W: the backbone once on the 0 and
        180 degree rotations and once on the 90 and 270 ones, which equals `forward` on a square
        and needs no branch on the shape (the ONNX graphs take any size)."""
        n = x.shape[0]
        turned = x.transpose(2, 3)
        upright = self.unet(torch.cat([x, x.flip(2).flip(3)], dim=0))
        sideways = self.unet(torch.cat([turned.flip(3), turned.flip(2)], dim=0))
        r0, r180, r90, r270 = (self.shifted(f, hole) for f in (upright[:n], upright[n:], sideways[:n], sideways[n:]))
        z = torch.cat([r0, r90.transpose(2, 3).flip(2), r180.flip(2).flip(3), r270.transpose(2, 3).flip(3)], dim=1)
        return self.nin_C(F.relu(self.nin_B(F.relu(self.nin_A(z)))))


class OnScale(nn.Module):
    """A twin as the port computes it: 0..255 in and out, any size, at one hole size."""

    def __init__(self, twin: TMBSN, hole: int):
        super().__init__()
        self.twin, self.hole = twin, hole

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 255.0 * self.twin.forward_any(x / 255.0, self.hole)


class PaddedPass(nn.Module):
    """The release's benchmark pass around `net`: pad (reflected), run, crop back."""

    def __init__(self, net: nn.Module, pad: int):
        super().__init__()
        self.net, self.pad = net, pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad
        if not p:
            return self.net(x)
        return self.net(F.pad(x, (p, p, p, p), mode="reflect"))[:, :, p:-p, p:-p]

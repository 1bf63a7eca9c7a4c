"""PyTorch twin of the TM-BSN release's NBSN student (`ambsn_jax.nets.nbsn`), kept beside
`reference` (which registers it in `TWINS`) so that each file stays one network family.

Its module names are the release's (`enc1.conv`, ..., `dec5_2.conv`, ..., `dec1_1`), so its
`load_state_dict(strict=True)` takes the release's `.pth`; `unit` is the release's forward on
x / 255 (at any size as the JAX port: `ceil_mode` pooling, the upsampled map cropped to its
skip), and `forward` wraps it as every twin here: 0..255 in and out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SLOPE = 0.1


class ConvAct(nn.Module):
    """A 3x3 conv and LeakyReLU(0.1): the release's `Conv2d_relu` (its only parameter is `conv`)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(x), SLOPE)


class NBSN(nn.Module):
    def __init__(self, in_ch: int = 3, out_ch: int = 3, base_ch: int = 48, depth: int = 5):
        super().__init__()
        c, self.depth = base_ch, depth
        for i in range(1, depth + 2):
            setattr(self, f"enc{i}", ConvAct(in_ch if i == 1 else c, c))
        for i in range(depth, 0, -1):
            setattr(self, f"dec{i}_2", ConvAct(2 * c if i == depth else 3 * c, 2 * c))
            setattr(self, f"dec{i}_1", nn.Conv2d(2 * c, out_ch, 3, padding=1) if i == 1 else ConvAct(2 * c, 2 * c))
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, a=SLOPE)
                    m.bias.zero_()

    def unit(self, x: torch.Tensor) -> torch.Tensor:
        """The release's forward: x / 255 in, the denoised image on the same 0..1 scale out."""
        skips = []
        f = self.enc1(x)
        for i in range(2, self.depth + 2):
            skips.append(f)
            f = getattr(self, f"enc{i}")(F.max_pool2d(f, 2, ceil_mode=True))
        for i in range(self.depth, 0, -1):
            skip = skips[i - 1]
            up = F.interpolate(f, scale_factor=2, mode="nearest")[:, :, : skip.shape[2], : skip.shape[3]]
            f = getattr(self, f"dec{i}_2")(torch.cat([up, skip], dim=1))
            f = getattr(self, f"dec{i}_1")(f)
        return f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 255.0 * self.unit(x / 255.0)

"""bench.py's PyTorch side for TM-BSN: its release's network run as its scripts run it.

The release's own code (`model/TMBSN.py` of the checkout that AMBSN_TMBSN_RELEASE names; it has
no licence, so this repository does not ship it), else its twin in `convert/reference_tmbsn.py`,
which computes the same (tests/convert/test_reference_tmbsn.py). On 0..1 inputs, as the release:
the forward at its benchmark hole size (2), the benchmark pass (reflect pad 16, forward, crop)
and a training step (L1(net(x, 5), x), Adam).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

RELEASE_ENV = "AMBSN_TMBSN_RELEASE"


def release_network():
    """(the release's TM-BSN at its defaults, which code it is)."""
    root = os.environ.get(RELEASE_ENV)
    if root:
        spec = importlib.util.spec_from_file_location("tmbsn_release_model", Path(root) / "model" / "TMBSN.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.TMBSN(in_channels=3, feat_channels=48, block_nums=5), "release"
    from ambsn_jax.convert.reference import twin_of
    from ambsn_jax.nets.tmbsn import TMBSNConfig

    return twin_of(TMBSNConfig()), "twin"


def case_fn(case: str, side: int, batch: int, crop: int, device: str, sync: Callable[[], None]) -> tuple[Callable[[], None], str]:
    """(one call of `case`, which code runs it)."""
    import torch
    import torch.nn.functional as F

    from ambsn_jax.nets.tmbsn import BENCHMARK_HOLE, BENCHMARK_PAD, TRAIN_HOLE

    net, code = release_network()
    net = net.to(device)
    if case == "train_step":
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        x = torch.rand(batch, 3, crop, crop, device=device)

        def step():
            opt.zero_grad()
            F.l1_loss(net(x, TRAIN_HOLE), x).backward()
            opt.step()
            sync()

        return step, code
    x = torch.rand(1, 3, side, side, device=device)
    p = BENCHMARK_PAD

    @torch.no_grad()
    def run():
        if case.startswith("forward"):
            net(x, BENCHMARK_HOLE)
        else:
            net(F.pad(x, (p, p, p, p), mode="reflect"), BENCHMARK_HOLE)[..., p:-p, p:-p]
        sync()

    return run, code

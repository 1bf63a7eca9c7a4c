"""bench.py's PyTorch side for TM-BSN and its student NBSN: the release's networks run as its
scripts run them.

The release's own code (`model/TMBSN.py`, `model/NBSN102.py` and `utils.py` of the checkout
that AMBSN_TMBSN_RELEASE names; it has no licence, so this repository does not ship it), else
the twins in `convert/reference_tmbsn.py` / `reference_nbsn.py`, which compute the same
(tests/convert/test_reference_tmbsn.py, tests/nets/test_nbsn.py). On 0..1 inputs, as the release:

- TM-BSN: the forward at its benchmark hole size (2), the benchmark pass (reflect pad 16,
  forward, crop) and a training step (L1(net(x, 5), x), Adam), as `train_tmbsn.py`.
- NBSN: the forward, the benchmark pass (reflect pad 16, forward, crop), and the student's
  update of `train_distill.py --recharge`: the Recharger over K cached targets (K the hole
  sizes of `distill_nbsn_sidd`), the sum of the K L1s, Adam. The release also runs its teacher
  on every crop in that step; distillation here runs it once per image before training, so
  neither side's step holds it. The twin has no Recharger: without the release, no mixing.
  The release's NBSN takes only sides that divide by 32: a side that does not (264) is
  zero-padded up to one first, as a caller of the release must.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

RELEASE_ENV = "AMBSN_TMBSN_RELEASE"
NBSN_MULTIPLE = 32  # 2**5: the release's NBSN pools five times without padding


def _release_module(name: str) -> ModuleType | None:
    """`<checkout>/<name>` of the release as a module; None without AMBSN_TMBSN_RELEASE."""
    root = os.environ.get(RELEASE_ENV)
    if not root:
        return None
    spec = importlib.util.spec_from_file_location(f"tmbsn_release_{Path(name).stem}", Path(root) / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def release_network(arch: str = "tmbsn"):
    """(the release's network of `arch` at its defaults, which code it is)."""
    module = _release_module("model/TMBSN.py" if arch == "tmbsn" else "model/NBSN102.py")
    if module is not None:
        net = module.TMBSN(in_channels=3, feat_channels=48, block_nums=5) if arch == "tmbsn" else module.N_BSN()
        return net, "release"
    from ambsn_jax.convert.reference import twin_of
    from ambsn_jax.nets import registry

    return twin_of(registry.get(arch).config()), "twin"


def case_fn(
    case: str, side: int, batch: int, crop: int, device: str, sync: Callable[[], None], arch: str = "tmbsn"
) -> tuple[Callable[[], None], str]:
    """(one call of `case` for `arch`, which code runs it)."""
    import torch

    net, code = release_network(arch)
    net = net.to(device)
    if case == "train_step":
        step = _train_step(arch, net, torch.rand(batch, 3, crop, crop, device=device), code)
        return lambda: (step(), sync()), code
    x = torch.rand(1, 3, side, side, device=device)
    forward = _forward(arch, net, padded=not case.startswith("forward"))

    @torch.no_grad()
    def run():
        forward(x)
        sync()

    return run, code


def _forward(arch: str, net, padded: bool) -> Callable:
    """The network's forward (TM-BSN: at its benchmark hole), inside the benchmark's reflection if `padded`."""
    import torch.nn.functional as F

    from ambsn_jax.nets.tmbsn import BENCHMARK_HOLE, BENCHMARK_PAD

    def network(x):
        if arch == "tmbsn":
            return net(x, BENCHMARK_HOLE)
        h, w = x.shape[-2:]
        return net(F.pad(x, (0, -w % NBSN_MULTIPLE, 0, -h % NBSN_MULTIPLE)))[..., :h, :w]

    if not padded:
        return network
    p = BENCHMARK_PAD
    return lambda x: network(F.pad(x, (p, p, p, p), mode="reflect"))[..., p:-p, p:-p]


def _train_step(arch: str, net, x, code: str) -> Callable[[], None]:
    """One Adam update of the release's recipe for `arch` on the fixed crops `x`."""
    import torch
    import torch.nn.functional as F

    from ambsn_jax.nets.tmbsn import TRAIN_HOLE

    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    if arch == "tmbsn":

        def loss():
            return F.l1_loss(net(x, TRAIN_HOLE), x)

    else:
        targets = [torch.rand_like(x) for _ in range(len(_recharge_holes()))]
        utils = _release_module("utils.py") if code == "release" else None
        mixed = (lambda: utils.Recharger().apply(x, targets)) if utils else (lambda: targets)

        def loss():
            out = net(x)
            return sum(F.l1_loss(out, t) for t in mixed())


    def step():
        opt.zero_grad()
        loss().backward()
        opt.step()

    return step


def _recharge_holes() -> list[int]:
    from ambsn_jax.train import config as configlib

    overrides = [(["data", "dir"], "demo"), (["distill", "teacher"], "bench")]
    return configlib.resolve("distill_nbsn_sidd", overrides).distill.recharge

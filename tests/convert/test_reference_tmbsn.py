"""TM-BSN's PyTorch twin holds the release's keys, and (opt-in) computes what the release's own
`model/TMBSN.py` computes: set AMBSN_TMBSN_RELEASE to a checkout of the release (its code has
no licence, so this repository neither ships nor fetches it)."""

from __future__ import annotations

import torch

from ambsn_jax.convert.reference import twin_of
from ambsn_jax.nets.tmbsn import TMBSNConfig
from tests.helpers import spec_shapes, tmbsn_release


def test_twin_has_the_release_keys():
    want = spec_shapes("tmbsn_state_dict.tsv")
    twin = twin_of(TMBSNConfig())
    assert {k: tuple(v.shape) for k, v in twin.state_dict().items()} == want
    twin.load_state_dict({k: torch.zeros(shape) for k, shape in want.items()}, strict=True)


def test_twin_computes_the_release_on_random_weights():
    release = tmbsn_release().TMBSN(in_channels=3, feat_channels=8, block_nums=2).eval()
    twin = twin_of(TMBSNConfig(base_ch=8, blocks=2)).eval()
    torch.manual_seed(0)
    # Random values everywhere, masked taps included, as the release's checkpoints hold them.
    sd = {k: torch.randn_like(v) * 0.2 if not k.endswith(".mask") else v for k, v in release.state_dict().items()}
    release.load_state_dict(sd, strict=True)
    twin.load_state_dict(sd, strict=True)
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        for hole in (0, 1, 2, 5):
            want = release(x, hole)
            assert want.std() > 1e-2
            torch.testing.assert_close(twin(x, hole), want, rtol=0, atol=1e-6)
        for got, want in zip(twin.forward_outs(x, [1, 3]), release.forward_outs(x, [1, 3])):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)

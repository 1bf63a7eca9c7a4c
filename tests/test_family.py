"""AP-BSN and MM-BSN against their PyTorch references: networks, inference, training gradients,
conversion (detected or named architecture, refusals), checkpoints, evaluation and configs."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from test_convert import assert_refused, printed_diffs, write_pth

from ambsn_jax import checkpoint, torch_port
from ambsn_jax.data.sidd import save_blocks_mat
from ambsn_jax.evaluation import cli as evaluation_cli
from ambsn_jax.evaluation.sidd import VALIDATION_CLEAN, VALIDATION_NOISY
from ambsn_jax.family import APBSN, MM_KINDS, MMBSN, APBSNConfig, MMBSNConfig
from ambsn_jax.inference import default_inference, denoise, pd_forward
from ambsn_jax.masks import blind_spot_mask
from ambsn_jax.train import config as configlib
from convert import reference
from convert.torch2flax import main as convert_main

# The releases' key lists (copies of ../shared/spec/*_state_dict.tsv, so that a bare checkout tests).
KEY_LISTS = Path(__file__).resolve().parent / "data"
FULL = {"apbsn": APBSNConfig(), "mmbsn": MMBSNConfig()}
# Width 16, not 8: at 8 these random-init networks are nearly constant (their output varies
# across pixels by ~1e-3, or not at all), so a wiring mistake could hide under the tolerance.
NARROW = {"apbsn": APBSNConfig(base_ch=16), "mmbsn": MMBSNConfig(base_ch=16)}
# Where the numbers are not the point (conversion plumbing, refusals, evaluate's switches).
SMALL = {"apbsn": APBSNConfig(base_ch=8), "mmbsn": MMBSNConfig(base_ch=8)}
CLASSES = {"apbsn": APBSN, "mmbsn": MMBSN}
ARCHS = list(NARROW)
# All ten kinds, written out of the release's branch order, with one DCl per block: the
# branch order, every mask pattern and the "c" / "r" quirk in one small network.
ALL_KINDS = MMBSNConfig(base_ch=16, dcl1_num=1, dcl2_num=1, mask_type="hui_fcha_cha_a135_a45_fsz_sz_r_c_o")


def n_params(model: nnx.Module) -> int:
    return sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


def image(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    return rng.uniform(0, 255, (n, h, w, 3)).astype(np.float32)


def spec_shapes(name: str) -> dict[str, tuple[int, ...]]:
    rows = [line.split("\t") for line in (KEY_LISTS / name).read_text().splitlines()[1:]]
    return {key: tuple(int(d) for d in shape.split("x")) for key, shape, *_ in rows}


# --- the networks -------------------------------------------------------------------------


@pytest.mark.parametrize("arch,count", [("apbsn", 3_656_131), ("mmbsn", 5_297_987)])
def test_parameter_counts_are_the_releases(arch, count):
    model = nnx.eval_shape(lambda: CLASSES[arch](FULL[arch], rngs=nnx.Rngs(0)))
    assert n_params(model) == count
    # torch counts MM-BSN's shared modules once, as the port holds them once.
    bsn = reference.release_bsn(arch, FULL[arch].to_dict())
    assert sum(p.numel() for p in bsn.parameters()) == count


@pytest.mark.parametrize("arch,tsv", [("apbsn", "apbsn_state_dict.tsv"), ("mmbsn", "mmbsn_o_a45_state_dict.tsv")])
def test_reference_has_the_release_keys(arch, tsv):
    want = spec_shapes(tsv)
    ref = reference.Denoiser(bsn=reference.release_bsn(arch, FULL[arch].to_dict()), tta=False)
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == want
    ref.load_state_dict({k: torch.zeros(shape) for k, shape in want.items()}, strict=True)


def test_mask_patterns_are_the_releases():
    np.testing.assert_array_equal(blind_spot_mask("a45", 3), [[1, 1, 0], [1, 0, 1], [0, 1, 1]])
    for kind, (_, pattern) in MM_KINDS.items():
        # The release builds each branch's mask from the name it passes ("col" for "c", ...).
        name = {"c": "col", "r": "row"}.get(kind, kind)
        for k in (3, 5):
            np.testing.assert_array_equal(blind_spot_mask(pattern, k), reference.release_mask(name, k), err_msg=kind)
    for kind in ("c", "r"):  # the release's quirk: centre masks, not column / row masks
        for _, want in torch_port.mask_buffers(MMBSNConfig(mask_type=kind)).values():
            np.testing.assert_array_equal(want, blind_spot_mask("central", len(want)))


@pytest.mark.parametrize("mask_type", ["o_x", "o_a45_o", "", "o__a45"])
def test_mm_bsn_refuses_mask_strings_it_cannot_build(mask_type):
    with pytest.raises(ValueError, match="mask_type"):
        MMBSNConfig(mask_type=mask_type)


def test_mm_bsn_branch_order_ignores_the_mask_string():
    assert MMBSNConfig(mask_type="hui_cha_o").kinds() == ("o", "cha", "hui")


TEST_NETWORKS = {
    "apbsn16": NARROW["apbsn"], "mmbsn16": NARROW["mmbsn"], "all_kinds16": ALL_KINDS,
    "apbsn128": FULL["apbsn"], "mmbsn128": FULL["mmbsn"],
}  # fmt: skip


@pytest.mark.parametrize("name", TEST_NETWORKS)
def test_parity_networks_are_alive(reference, rng, name):
    """Parity within 1e-4 (conftest.PARITY_TOL) means something only if outputs vary across
    pixels well beyond it."""
    with torch.no_grad():
        y = reference(TEST_NETWORKS[name]).bsn(torch.from_numpy(image(rng, 1, 13, 17).transpose(0, 3, 1, 2).copy()))
    assert float(y.std(dim=(2, 3)).min()) > 5e-3


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_full_width_parity(flax_model, reference, assert_parity, rng, arch):
    assert_parity(flax_model(FULL[arch]), reference(FULL[arch]).bsn, image(rng, 1, 20, 20))


def test_every_mm_bsn_kind_matches_the_reference(flax_model, reference, assert_parity, rng):
    assert_parity(flax_model(ALL_KINDS), reference(ALL_KINDS).bsn, image(rng, 1, 13, 17))


# --- inference ----------------------------------------------------------------------------


def test_default_inference_follows_the_architecture():
    assert default_inference({"arch": "ambsn"}).tta and default_inference({}).tta
    for arch in ARCHS:
        cfg = default_inference({"arch": arch})
        assert not cfg.tta and cfg.r3 and cfg.pd_b == 2 and (cfg.r3_t, cfg.r3_p) == (8, 0.16)


@pytest.mark.parametrize("arch", ARCHS)
def test_narrow_pd2_and_denoise_parity(flax_model, reference, assert_parity, rng, arch):
    model, ref = flax_model(NARROW[arch]), reference(NARROW[arch], tta=False)
    assert_parity(lambda v: pd_forward(model, v, 2), lambda v: ref(v, pd=2), image(rng, 1, 16, 20))
    h, w = 15, 21  # odd: R3 runs on the image padded to 16 x 22, as the releases do
    m = rng.uniform(size=(8, 1, h + 1, w + 1, 3)) < 0.16
    tmask = torch.from_numpy(np.ascontiguousarray(m.transpose(0, 1, 4, 2, 3)))
    cfg = default_inference({"arch": arch})
    assert_parity(
        lambda v: denoise(model, v, None, cfg, masks=jnp.asarray(m)),
        lambda v: ref.denoise(v, masks=tmask)[:, :, :h, :w],  # the releases return the padded size
        image(rng, 1, h, w),
    )


# --- training -----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_training_loss_and_grads_match_the_reference(flax_model, reference, arch):
    """L1 on the PD-5 forward (the releases' objective): loss and every gradient."""
    cfg = NARROW[arch]
    model, ref = flax_model(cfg), reference(cfg).train()
    batch = np.random.default_rng(1).uniform(0, 255, (2, 20, 20, 3)).astype(np.float32)
    x = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())
    want_loss = torch.nn.functional.l1_loss(ref(x, pd=5), x)
    want_loss.backward()

    xj = jnp.asarray(batch)
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean(jnp.abs(pd_forward(m, xj, 5) - xj)))(model)
    assert abs(float(loss) - want_loss.item()) <= 1e-5 * want_loss.item()
    # The reference masks its kernels in place, so autograd leaves gradients at blind taps;
    # the port masks inside the forward, where they are zero. Only the rest can match.
    masks = {key.replace(".mask", ".weight"): m for key, (_, m) in torch_port.mask_buffers(cfg).items()}
    paths = torch_port.key_map(cfg)
    flat = dict(nnx.to_flat_state(grads))
    named = dict(ref.bsn.named_parameters())  # shared modules once, under their first name
    assert len(named) == len(flat)
    for name, p in named.items():
        want = p.grad.numpy() * masks.get(name, 1)
        if name.endswith(".weight"):
            want = want.transpose(2, 3, 1, 0)
        got = np.asarray(flat[paths[name]].get_value())
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max(), err_msg=name)


# --- conversion ---------------------------------------------------------------------------


def adam_state(sd: dict[str, torch.Tensor]) -> dict:
    """A real optimizer state dict, as AP-BSN's checkpoints carry beside the weights."""
    params = [torch.nn.Parameter(v.clone()) for k, v in sd.items() if not k.endswith(".mask")]
    opt = torch.optim.Adam(params, lr=1e-4)
    sum(p.sum() for p in params).backward()
    opt.step()
    return opt.state_dict()


@pytest.mark.parametrize("arch", ARCHS)
def test_converts_verifies_and_records_the_architecture(official_state_dict, flax_model, tmp_path, capsys, arch):
    sd = official_state_dict(SMALL[arch])
    src = tmp_path / f"{arch}.pth"
    container = {"epoch": 20, "model_weight": {"denoiser": sd}}
    if arch == "apbsn":
        container["optimizer_weight"] = {"denoiser": adam_state(sd)}
    torch.save(container, src)
    out = tmp_path / "out"
    assert convert_main([str(src), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    diffs = printed_diffs(stdout)
    assert set(diffs) == {"bsn", "pd2", "pd5"} and max(diffs.values()) < 1e-4
    assert f"({arch}, C=8, " in stdout

    model, meta = checkpoint.load_model(out)
    assert meta["arch"] == arch and type(model) is CLASSES[arch]
    assert meta["config"] == SMALL[arch].to_dict()
    # The very parameters of the in-memory conversion, whose numbers the parity tests check.
    want = checkpoint.params_dict(flax_model(SMALL[arch]))
    jax.tree.map(np.testing.assert_array_equal, checkpoint.params_dict(model), want)


def test_arch_override(official_state_dict, tmp_path, capsys):
    sd = official_state_dict(SMALL["mmbsn"])
    src = write_pth(tmp_path / "ckpt.pth", sd)
    out = tmp_path / "out"
    rc = convert_main([str(src), "--out", str(out), "--arch", "apbsn"])
    assert_refused(rc, capsys.readouterr().err, out, "missing keys: branch1.body.0.bias")
    # Keys of two architectures: detection gives up and --arch decides.
    src = write_pth(tmp_path / "ckpt.pth", sd | {"bsn.branch_local.extra": torch.zeros(1)})
    rc = convert_main([str(src), "--out", str(out)])
    assert_refused(rc, capsys.readouterr().err, out, "cannot tell the architecture: branch keys of AM-BSN and MM-BSN")
    rc = convert_main([str(src), "--out", str(out), "--arch", "mmbsn"])
    assert_refused(rc, capsys.readouterr().err, out, "unexpected keys: branch_local.extra")
    assert convert_main([str(write_pth(src, sd)), "--out", str(out), "--arch", "mmbsn"]) == 0
    assert type(checkpoint.load_model(out)[0]) is MMBSN


def _edit(sd: dict, **changes: torch.Tensor | None) -> dict:
    """A copy of sd with keys (given with `.` as `__`, without `bsn.`) set, or dropped where None."""
    sd = dict(sd)
    for key, value in changes.items():
        key = "bsn." + key.replace("__", ".")
        if value is None:
            del sd[key]
        else:
            sd[key] = value
    return sd


REFUSALS = {
    ("apbsn", "missing"): (
        lambda sd: _edit(sd, branch2__body__15__bias=None), "missing keys: branch2.body.15.bias",
    ),
    ("mmbsn", "missing"): (
        lambda sd: _edit(sd, branch6_2__conv1_3__0__bias=None), "missing keys: branch6_2.conv1_3.0.bias",
    ),
    ("apbsn", "unexpected"): (
        lambda sd: _edit(sd, branch1__body__16__weight=torch.zeros(1)), "unexpected keys: branch1.body.16.weight",
    ),
    ("mmbsn", "unexpected"): (
        # The branch of a kind that does not exist (N = 11).
        lambda sd: _edit(sd, branch11_1__head__0__weight=torch.zeros(1)),
        "unexpected keys: branch11_1.head.0.weight",
    ),
    ("apbsn", "misshaped"): (
        lambda sd: _edit(sd, branch1__body__0__weight=torch.zeros(8, 8, 5, 5)),
        "branch1.body.0.weight: shape (8, 8, 5, 5), expected (8, 8, 3, 3)",
    ),
    ("mmbsn", "misshaped"): (
        lambda sd: _edit(sd, conv2_1__0__weight=torch.zeros(8, 8, 1, 1)),
        "conv2_1.0.weight: shape (8, 8, 1, 1), expected (8, 16, 1, 1)",
    ),
    ("mmbsn", "shared_differ"): (
        lambda sd: _edit(sd, conv2_2__0__bias=sd["bsn.conv2_2.0.bias"] + 1e-3), "conv2_2.0.bias: differs from"
    ),
    ("apbsn", "mask_pattern"): (
        lambda sd: _edit(sd, branch2__body__0__mask=torch.ones(8, 8, 5, 5)),
        "branch2.body.0.mask: not the expected blind-spot pattern",
    ),
    ("mmbsn", "mask_pattern"): (
        # A centre mask where the a45 branch needs its anti-diagonal.
        lambda sd: _edit(sd, branch6_1__head__0__mask=sd["bsn.branch1_1.head.0.mask"]),
        "branch6_1.head.0.mask: not the expected blind-spot pattern",
    ),
}


@pytest.mark.parametrize("arch,case", list(REFUSALS))
def test_refuses_bad_state_dicts(official_state_dict, tmp_path, capsys, arch, case):
    edit, fragment = REFUSALS[arch, case]
    src = write_pth(tmp_path / "ckpt.pth", edit(official_state_dict(SMALL[arch])))
    out = tmp_path / "out"
    rc = convert_main([str(src), "--out", str(out)])
    assert_refused(rc, capsys.readouterr().err, out, fragment)


# --- evaluation and training configs ------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_evaluate_takes_the_release_inference(official_state_dict, tmp_path, capsys, arch):
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (1, 1, 12, 10, 3), dtype=np.uint8)
    save_blocks_mat(tmp_path / VALIDATION_NOISY, clean ^ 1, "ValidationNoisyBlocksSrgb")
    save_blocks_mat(tmp_path / VALIDATION_CLEAN, clean, "ValidationGtBlocksSrgb")
    src = write_pth(tmp_path / "release.pth", official_state_dict(SMALL[arch]))
    report = tmp_path / "report.json"
    argv = ["--ckpt", src, "--sidd-val", tmp_path, "--no-r3", "--json", report]
    assert evaluation_cli.main([str(a) for a in argv]) == 0, capsys.readouterr().err
    assert json.loads(report.read_text())["options"]["tta"] is False


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value}
    return out


@pytest.mark.parametrize("name,arch,lr,epochs", [("apbsn_sidd", "apbsn", 1e-4, 20), ("mmbsn_sidd", "mmbsn", 1e-4, 30)])
def test_configs_hold_the_release_recipes(name, arch, lr, epochs):
    tree, sidd = _flat(configlib.load_yaml_tree(name)), _flat(configlib.load_yaml_tree("sidd"))
    assert (tree["model.arch"], tree["optim.lr"], tree["train.epochs"]) == (arch, lr, epochs)
    # Everything else is AM-BSN's recipe.
    differ = {"name", "model.arch", "optim.lr", "train.epochs"}
    assert {k: v for k, v in tree.items() if k not in differ} == {k: v for k, v in sidd.items() if k not in differ}

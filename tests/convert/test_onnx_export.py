"""The ONNX graphs: written only when onnxruntime matches JAX, at shapes the export never saw."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from ambsn_jax.checkpoint.store import DEMO_CHECKPOINT, load_checkpoint
from ambsn_jax.cli.convert import main_onnx
from ambsn_jax.convert import onnx_export
from ambsn_jax.inference.release import default_inference, denoise
from ambsn_jax.nets.nbsn import NBSNConfig
from ambsn_jax.nets.student import StudentConfig
from ambsn_jax.nets.tmbsn import TMBSNConfig
from tests.helpers import write_pth

ONNX_DIFF_LINE = re.compile(r"^\s+(\w+ \d+x\d+x\d+): (\S+)$", re.MULTILINE)


def r3_around_the_graph(run_bsn, x: np.ndarray, y: np.ndarray, masks: np.ndarray, pad: int = 2) -> np.ndarray:
    """docs/export.md's R3 loop: `y` the PD graph's output, `masks` (T, *x.shape) booleans, NCHW."""
    outs = []
    for mask in masks:
        z = np.pad(np.where(mask, x, y), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")
        outs.append(run_bsn(z)[:, :, pad:-pad, pad:-pad])
    return np.mean(outs, axis=0)


def test_onnx_graphs_match_jax_at_any_shape(tmp_path, capsys):
    import onnxruntime as ort

    out = tmp_path / "demo.onnx"
    assert main_onnx([str(DEMO_CHECKPOINT), "--out", str(out)]) == 0
    printed = {k: float(v) for k, v in ONNX_DIFF_LINE.findall(capsys.readouterr().out)}
    assert len(printed) == 4 and max(printed.values()) < 1e-3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.onnx", "demo_denoise.onnx"]

    demo = load_checkpoint(DEMO_CHECKPOINT)
    net = demo.module()
    model = jax.jit(lambda v: net(v))  # eager, every op would compile on its own
    bsn = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    pd = ort.InferenceSession(str(tmp_path / "demo_denoise.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for shape in [(3, 3, 25, 31), (1, 3, 16, 48)]:  # sizes and batches the export never saw
        x = rng.uniform(0, 255, shape).astype(np.float32)
        xj = jnp.asarray(x.transpose(0, 2, 3, 1))
        (y,) = pd.run(None, {"x": x})
        want = np.asarray(jax.jit(lambda v: denoise(net, v, None, onnx_export.pd_inference(demo.meta)))(xj)).transpose(0, 3, 1, 2)
        assert y.shape == shape and np.max(np.abs(y - want)) < 1e-3
        (b,) = bsn.run(None, {"x": x})
        assert np.max(np.abs(b - np.asarray(model(xj)).transpose(0, 3, 1, 2))) < 1e-3

    # R3 as a loop around the network graph gives the release's full default inference.
    x = rng.uniform(0, 255, (1, 3, 20, 30)).astype(np.float32)
    masks = rng.uniform(size=(8, *x.shape)) < 0.16
    (y,) = pd.run(None, {"x": x})
    got = r3_around_the_graph(lambda z: bsn.run(None, {"x": z.astype(np.float32)})[0], x, y, masks)
    xj = jnp.asarray(x.transpose(0, 2, 3, 1))
    cfg = default_inference(demo.meta, precision="highest")
    want = jax.jit(lambda v, m: denoise(net, v, None, cfg, masks=m))(xj, jnp.asarray(masks.transpose(0, 1, 3, 4, 2)))
    assert np.max(np.abs(got - np.asarray(want).transpose(0, 3, 1, 2))) < 1e-3


def test_onnx_refuses_an_existing_graph(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    (tmp_path / "m_denoise.onnx").write_bytes(b"keep")
    assert main_onnx([str(DEMO_CHECKPOINT), "--out", str(out)]) == 2
    assert "m_denoise.onnx: already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_denoise.onnx"]


def test_a_student_exports_as_its_network_in_both_graphs(official_state_dict, tmp_path, capsys):
    """The student's default inference is one pass: its "denoise" graph is the network itself."""
    import onnxruntime as ort

    src = write_pth(tmp_path / "student.pth", official_state_dict(StudentConfig(base_ch=4, depth=2)))
    out = tmp_path / "student.onnx"
    assert main_onnx([str(src), "--out", str(out)]) == 0
    printed = {k: float(v) for k, v in ONNX_DIFF_LINE.findall(capsys.readouterr().out)}
    assert len(printed) == 4 and max(printed.values()) < 1e-3
    model = load_checkpoint(src).module()
    x = np.random.default_rng(4).uniform(0, 255, (2, 3, 19, 9)).astype(np.float32)
    want = np.asarray(model(jnp.asarray(x.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
    for graph in (out, onnx_export.denoise_graph_path(out)):
        (y,) = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]).run(None, {"x": x})
        assert np.max(np.abs(y - want)) < 1e-3


def test_nbsn_exports_with_its_release_reflection_padding(official_state_dict, tmp_path, capsys):
    """NBSN's default inference is one pass on the input reflected by 16: so is its "denoise"
    graph, and the network graph is the U-Net alone (both checked at CHECK_SHAPES by the export)."""
    import onnxruntime as ort

    src = write_pth(tmp_path / "nbsn.pth", official_state_dict(NBSNConfig(base_ch=4, depth=2)), prefix="", container=False)
    out = tmp_path / "nbsn.onnx"
    assert main_onnx([str(src), "--out", str(out)]) == 0
    printed = {k: float(v) for k, v in ONNX_DIFF_LINE.findall(capsys.readouterr().out)}
    assert len(printed) == 4 and max(printed.values()) < 1e-3
    model = load_checkpoint(src).module()
    x = np.random.default_rng(4).uniform(0, 255, (1, 3, 19, 21)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (0, 0), (16, 16), (16, 16)), mode="reflect")
    want = np.asarray(model(jnp.asarray(padded.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)[:, :, 16:-16, 16:-16]
    (y,) = ort.InferenceSession(str(onnx_export.denoise_graph_path(out)), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.max(np.abs(y - want)) < 1e-3


def test_tmbsn_exports_its_network_and_the_release_benchmark_pass(official_state_dict, tmp_path, capsys):
    """A release-format TM-BSN .pth: the network at hole 2 on any size (the release takes
    squares), and the reflect-padded benchmark pass, both as the JAX port computes them."""
    import onnxruntime as ort

    sd = official_state_dict(TMBSNConfig(base_ch=4, blocks=1))
    src = write_pth(tmp_path / "tmbsn.pth", sd, prefix="", container=False)
    out = tmp_path / "tmbsn.onnx"
    assert main_onnx([str(src), "--out", str(out)]) == 0
    printed = {k: float(v) for k, v in ONNX_DIFF_LINE.findall(capsys.readouterr().out)}
    assert len(printed) == 4 and max(printed.values()) < 1e-3
    ckpt = load_checkpoint(src)
    x = np.random.default_rng(5).uniform(0, 255, (1, 3, 18, 23)).astype(np.float32)
    xj = jnp.asarray(x.transpose(0, 2, 3, 1))
    (y,) = ort.InferenceSession(str(onnx_export.denoise_graph_path(out)), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    want = jax.jit(lambda v: denoise(ckpt.module(), v, None, default_inference(ckpt.meta)))(xj)
    assert np.max(np.abs(y - np.asarray(want).transpose(0, 3, 1, 2))) < 1e-3

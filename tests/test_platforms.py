"""GPU and TPU readiness, checked on a CPU machine (issue #12): the compiled release inference and
the compiled training step export with `jax.export` for cuda and tpu, and nothing CPU-only is
inside them.

Exporting lowers to StableHLO for the named platforms and computes nothing, so the weights stay
abstract (shapes only) and no GPU or TPU is needed. What would tie a program to the CPU:
- a host callback (`jax.pure_callback`, `io_callback`, `jax.debug.callback` / `print`): the
  export itself refuses it ("the platform for the specified backend cpu is different from the
  lowering platform cuda"), so an export that succeeds has none;
- a `lax.platform_dependent` with a cpu branch and no default: its platform index has no
  lowering for cuda / tpu, and the export fails;
- a custom call of a CPU library (LAPACK `lapack_*`, DUCC FFTs `ducc_*`, `cpu_*`), or of any
  other platform's library: only the platform-neutral targets of
  `ambsn_jax.portability.NEUTRAL_TARGETS` may appear (its `census` and `problems` tell).
`test_the_gate_refuses_cpu_only_constructs` checks that each of these is caught.

The network's convolution (ambsn_jax.ops.conv) computes its kernel gradient tap by tap on CPUs
(a `lax.scan` over row bands of matrix products) and with XLA's own convolution elsewhere, via
`platform_dependent(cpu=..., default=...)`. What the exports show (jax 0.10):
- for one platform, the branch of that platform alone is lowered: the cuda and tpu modules hold
  no while loop and no tap products (the XLA kernel-gradient convolution instead, inside a
  one-branch `stablehlo.case`), the cpu module holds one while loop per k x k convolution;
- for several platforms, every branch that one of them selects is kept behind a platform index
  resolved when the module is compiled: ("cuda", "tpu") still has no CPU branch (neither platform
  selects it), ("cpu", "cuda") has both;
- for several platforms, each convolution and matrix product appears once per platform: their
  lowering rules are registered per platform (`conv_general_dilated` has its own for cpu and gpu,
  which expand complex convolutions, and the default for tpu), so the module is a case over the
  platform index with one copy per platform; the counts are exactly twice a single platform's.
  This holds inside the kept CPU branch too (its tap products are lowered for cuda as well, though
  cuda never takes it), while its loops, whose lowering is the same everywhere, appear once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import export

from ambsn_jax.checkpoint.meta import CheckpointMeta
from ambsn_jax.checkpoint.store import abstract_params
from ambsn_jax.inference.release import default_inference
from ambsn_jax.nets import registry
from ambsn_jax.portability import census, export_for, inference_program, problems, train_program
from ambsn_jax.train import config as configlib

ROOT = Path(__file__).resolve().parents[1]
WIDTH, BLOCK, CROP, BATCH = 8, 20, 20, 2


def assert_portable(exp: export.Exported) -> dict:
    """The census of an export that holds no custom call outside the neutral targets."""
    facts = census(exp.mlir_module())
    assert not problems(facts), f"the {exp.platforms} export: {'; '.join(problems(facts))}"
    return facts


def _avals(tree) -> list[tuple]:
    return [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


def _net(arch: str):
    config = registry.network_config(arch, {"base_ch": WIDTH})
    return config, CheckpointMeta.for_release(arch, config, source="tests/test_platforms.py")


def _kernels(meta: CheckpointMeta) -> list[tuple[int, ...]]:
    """The k x k kernels' shapes (1 x 1 ones are matrix products, ambsn_jax.ops.conv)."""
    return [p.shape for p in jax.tree.leaves(abstract_params(meta)) if p.ndim == 4 and p.shape[:2] != (1, 1)]


@pytest.fixture(scope="module")
def forward_census():
    """arch -> census of one network forward on a BLOCK x BLOCK input, exported for cuda."""

    def make(arch: str) -> dict:
        config, meta = _net(arch)
        graphdef = registry.graphdef(arch, config)
        fn = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
        x = jax.ShapeDtypeStruct((1, BLOCK, BLOCK, 3), jnp.float32)
        return assert_portable(export_for(fn, (abstract_params(meta), x), ("cuda",)))

    return make


def _inference(arch: str, n: int = 1, mesh=None):
    """`BatchDenoiser.program` and its abstract arguments for batches of n BLOCK x BLOCK items,
    over `mesh` (default: one device)."""
    config, meta = _net(arch)
    return inference_program(arch, config, meta, mesh=mesh, n=n, side=BLOCK)


@pytest.mark.parametrize("arch", ["ambsn", "apbsn"])
def test_the_release_inference_exports_for_gpu_and_tpu(arch, forward_census):
    """TTA (AM-BSN: PD 2 and PD 5 passes) and R3 (8 passes in one `lax.map`), for cuda and tpu."""
    cfg = default_inference(_net(arch)[1])
    fn, args = _inference(arch)
    assert cfg.r3 and cfg.tta == (arch == "ambsn")
    one = forward_census(arch)
    # Each PD pass runs the network once; R3's T passes are one loop body: one more copy.
    passes = (2 if cfg.tta else 1) + 1
    for platforms, copies in [(("cuda",), 1), (("tpu",), 1), (("cuda", "tpu"), 2)]:
        exp = export_for(fn, args, platforms)
        assert exp.platforms == platforms and exp.nr_devices == 1
        assert _avals(exp.in_avals) == _avals(args)
        assert _avals(exp.out_avals) == [((1, BLOCK, BLOCK, 3), jnp.float32)]
        facts = assert_portable(exp)
        assert facts["custom_calls"] == Counter() and facts["collectives"] == Counter()
        assert facts["convolution"] == copies * passes * one["convolution"], platforms
        assert facts["dot_general"] == copies * passes * one["dot_general"], platforms
        # R3's lax.map; no other loop (the threefry draws are unrolled off the CPU).
        assert facts["while"] == 1, platforms


def _train(arch: str = "ambsn", batch: int = BATCH, mesh=None):
    """The training step of the demo recipe at width WIDTH on `batch` CROP x CROP crops, and its
    abstract arguments, over `mesh` (default: none)."""
    cfg = configlib.resolve(
        "demo",
        [(["model", "arch"], arch), (["model", "base_ch"], WIDTH), (["data", "crop"], CROP),
         (["train", "batch_size"], batch)],
    )  # fmt: skip
    return train_program(arch, cfg, WIDTH, mesh=mesh)


def test_the_train_step_exports_for_gpu_and_tpu_without_the_cpu_kernel_gradient(forward_census):
    """Forward, backward and Adam at width 8: the cuda and tpu modules hold XLA's kernel-gradient
    convolutions and not the CPU's tap-wise scan; ("cuda", "tpu") neither; ("cpu", "cuda") both."""
    fn, args = _train()
    _, meta = _net("ambsn")
    kernels = _kernels(meta)
    taps = sum(k[0] * k[1] for k in kernels)
    one = forward_census("ambsn")
    assert one["convolution"] == len(kernels) == 20 and taps == 19 * 9 + 25
    facts = {}
    for platforms in [("cuda",), ("tpu",), ("cpu",), ("cuda", "tpu"), ("cpu", "cuda")]:
        exp = export_for(fn, args, platforms)
        assert exp.platforms == platforms
        assert _avals(exp.in_avals) == _avals(args)
        assert _avals(exp.out_avals) == _avals(jax.eval_shape(fn, *args))
        facts[platforms] = f = assert_portable(exp)
        assert f["custom_calls"] == Counter() and f["collectives"] == Counter()
    k = len(kernels)
    # cuda / tpu: forward, input gradient and kernel gradient of every k x k conv are
    # convolutions; no loop, so no tap-wise kernel gradient. The 1 x 1 convs are products:
    # forward, input and kernel gradients, less the input gradient of the first (the batch).
    for platforms in [("cuda",), ("tpu",)]:
        assert facts[platforms]["convolution"] == 3 * k
        assert facts[platforms]["dot_general"] == 3 * one["dot_general"] - 1
        assert facts[platforms]["while"] == 0
    # cpu: the kernel gradient is one scan per k x k conv, each holding one product per tap.
    assert facts[("cpu",)]["convolution"] == 2 * k
    assert facts[("cpu",)]["while"] == k
    assert facts[("cpu",)]["dot_general"] == facts[("cuda",)]["dot_general"] + taps
    # Several platforms: one copy of each convolution and product per platform (module
    # docstring), inside the CPU branch too; that branch (its loops) only where cpu is among them.
    assert {n: facts[("cuda", "tpu")][n] for n in ("convolution", "dot_general", "while")} == {
        "convolution": 2 * 3 * k, "dot_general": 2 * facts[("cuda",)]["dot_general"], "while": 0,
    }  # fmt: skip
    assert {n: facts[("cpu", "cuda")][n] for n in ("convolution", "dot_general", "while")} == {
        "convolution": 2 * 3 * k, "dot_general": 2 * facts[("cpu",)]["dot_general"], "while": k,
    }  # fmt: skip


def test_the_student_and_its_distillation_step_export_for_gpu_and_tpu():
    """The student's one pass (no R3 loop) and its training step on 6-channel batches (noisy
    crops and the teacher's), for cuda and tpu, with nothing CPU-only in them."""
    config = registry.network_config("student", {"base_ch": 4, "depth": 2})
    meta = CheckpointMeta.for_release("student", config, source="test")
    fn, args = inference_program("student", config, meta, side=BLOCK)
    facts = assert_portable(export_for(fn, args, ("cuda", "tpu")))
    assert facts["while"] == 0 and facts["custom_calls"] == Counter()
    cfg = configlib.resolve(
        "distill_demo", [(["model", "base_ch"], 4), (["data", "crop"], CROP), (["train", "batch_size"], BATCH)]
    )
    fn, args = train_program("student", cfg, 4)
    assert args[1].shape == (BATCH, CROP, CROP, 6)
    facts = assert_portable(export_for(fn, args, ("cuda", "tpu")))
    assert facts["custom_calls"] == Counter() and facts["while"] == 0


def test_the_gate_refuses_cpu_only_constructs():
    """Each CPU-only construct fails here, so the exports above passing means none is inside."""
    x = jax.ShapeDtypeStruct((3, 3), jnp.float32)

    def callback(x):
        return jax.pure_callback(lambda a: np.asarray(a) * 2, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    def printing(x):
        jax.debug.print("{}", x)
        return x * 2

    for fn in (callback, printing):
        with pytest.raises(ValueError, match="different from the lowering platform cuda"):
            export_for(jax.jit(fn), (x,), ("cuda",))
    no_default = jax.jit(lambda x: jax.lax.platform_dependent(x, cpu=lambda x: x * 2))
    with pytest.raises(NotImplementedError, match="platform_index.* not found for platform tpu"):
        export_for(no_default, (x,), ("tpu",))
    inverse = jax.jit(jnp.linalg.inv)
    with pytest.raises(AssertionError, match=r"CPU-only custom calls: lapack_s"):
        assert_portable(export_for(inverse, (x,), ("cpu",)))
    with pytest.raises(AssertionError, match=r"platform-specific custom calls: .*cusolver"):
        assert_portable(export_for(inverse, (x,), ("cuda",)))

_SHARDED = textwrap.dedent(
    """
    import json, sys
    from ambsn_jax import mesh as meshlib
    from ambsn_jax.portability import export_for
    from tests import test_platforms as t

    out = {}
    mesh = meshlib.make_mesh(4)
    programs = {"train": t._train(batch=4, mesh=mesh), "inference": t._inference("ambsn", 4, mesh)}
    for name, (f, args) in programs.items():
        for p in ("cuda", "tpu"):
            exp = export_for(f, args, (p,))
            facts = t.assert_portable(exp)
            out[f"{name}/{p}"] = {
                "platforms": list(exp.platforms), "devices": exp.nr_devices,
                "specs_in": sorted({tuple(s.spec) for s in exp.in_shardings_jax(mesh)}),
                "spec_batch": tuple(exp.in_shardings_jax(mesh)[-2 if name == "inference" else -1].spec),
                "specs_out": sorted({tuple(s.spec) for s in exp.out_shardings_jax(mesh)}),
                "convolution": facts["convolution"], "while": facts["while"],
                "collectives": sum(facts["collectives"].values()), "custom_calls": dict(facts["custom_calls"]),
            }
    json.dump(out, sys.stdout)
    """
)


def test_the_sharded_programs_export_over_four_devices():
    """Data-parallel over a mesh of 4 (forced CPU devices; the export needs only their count):
    the batch split, the rest replicated, the same ops as on one device, and no collective in
    the StableHLO: the sharding travels as Shardy annotations (`sdy.sharding`), and XLA's
    partitioner inserts the gradient all-reduce when the module is compiled for the devices."""
    env = {**os.environ, "XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", _SHARDED], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout)
    assert sorted(got) == ["inference/cuda", "inference/tpu", "train/cuda", "train/tpu"]
    for name, facts in got.items():
        program, platform = name.split("/")
        assert facts["platforms"] == [platform] and facts["devices"] == 4
        # PartitionSpecs as lists: ["data"] split along the mesh axis, [] replicated.
        assert facts["spec_batch"] == ["data"]
        assert facts["specs_in"] == [[], ["data"]]
        assert facts["collectives"] == 0 and facts["custom_calls"] == {}
        if program == "train":
            assert facts["specs_out"] == [[]]
            assert (facts["convolution"], facts["while"]) == (60, 0)
        else:
            assert facts["specs_out"] == [["data"]]
            assert (facts["convolution"], facts["while"]) == (60, 1)

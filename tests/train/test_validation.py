"""Validation inside training (ambsn_jax.train.validation): the scores do not depend on the mesh."""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest

from tests.helpers import run_script

_VALIDATION = """
import json, sys
import numpy as np
from ambsn_jax import mesh as meshlib
from ambsn_jax.checkpoint.store import load_checkpoint
from ambsn_jax.evaluation.sidd import load_validation
from ambsn_jax.inference.denoiser import BatchDenoiser
from ambsn_jax.inference.release import default_inference
from ambsn_jax.train import config as configlib
from ambsn_jax.train.validation import validation_scores

ckpt = load_checkpoint(sys.argv[1])
cfg = configlib.resolve("demo", [(["val", "batch_size"], 1)])
denoiser = BatchDenoiser(ckpt.meta.arch, ckpt.meta.config, default_inference(ckpt.meta), meshlib.make_mesh())
scores, rows = validation_scores(denoiser, ckpt.params, load_validation(sys.argv[2]), cfg)
print(json.dumps({"devices": denoiser.devices, **scores, "rows": [r.tolist() for r in rows]}))
"""


def test_validation_inside_training_scores_alike_on_four_devices(ckpt, val_dir):
    """The scores training records (its blocks split over the training mesh) equal one device's."""
    script = _VALIDATION.replace("sys.argv[1]", repr(str(ckpt))).replace("sys.argv[2]", repr(str(val_dir)))
    proc = run_script(script, {"XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=4"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    four = json.loads(proc.stdout.strip().splitlines()[-1])
    with contextlib.redirect_stdout(io.StringIO()) as printed:  # this process: one device
        exec(script, {})  # noqa: S102 - the same script, not a second copy of it
    one = json.loads(printed.getvalue().strip().splitlines()[-1])
    assert (one["devices"], four["devices"]) == (1, 4)
    assert four["psnr"] == pytest.approx(one["psnr"], abs=1e-4) and four["ssim"] == pytest.approx(one["ssim"], abs=1e-5)
    assert len(one["rows"]) == 3 and np.abs(np.asarray(four["rows"]) - np.asarray(one["rows"])).max() <= 1

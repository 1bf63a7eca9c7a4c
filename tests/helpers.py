"""Helpers the tests share (imported as `tests.helpers`; no test module imports another)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import jax
import numpy as np
import torch
from flax import nnx

from ambsn_jax.checkpoint.store import params_of
from ambsn_jax.inference.denoiser import BatchDenoiser, BoundDenoiser
from ambsn_jax.inference.release import InferenceConfig
from ambsn_jax.nets import registry

ROOT = Path(__file__).resolve().parents[1]
# The releases' key lists (official checkpoints' keys and shapes, docs/release.md "Checkpoint files").
KEY_LISTS = Path(__file__).resolve().parent / "convert" / "keys"

# Random-init outputs are ~0.3 at most, 1000x below trained 0..255 outputs, and the measured
# float32 gap is ~1e-7: the tests hold parity far tighter than the 5e-3 of the converter so
# that a small mistake (one bias, one tap) cannot hide under the bound.
PARITY_TOL = 1e-4

# The release's inference: PD 5 / padding 2 training, PD 2 inference, TTA, R3.
RELEASE = InferenceConfig(pd_a=5, pd_pad=2)

# The tiny SIDD-format sets of conftest: images, blocks, H, W, RGB (non-square catches swapped axes).
SIDD_SHAPE = (2, 2, 20, 16, 3)

DIFF_LINE = re.compile(r"^\s+(bsn|pd2|pd5): (\S+)$", re.MULTILINE)


def image(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """(n, h, w, 3) float32 uniform in 0..255."""
    return rng.uniform(0, 255, (n, h, w, 3)).astype(np.float32)


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(y: torch.Tensor) -> np.ndarray:
    return y.detach().numpy().transpose(0, 2, 3, 1)


def numpy_sd(sd: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in sd.items()}


def n_params(model: nnx.Module) -> int:
    return sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


def bound(model: nnx.Module, cfg: InferenceConfig = RELEASE) -> BoundDenoiser:
    """The compiled inference `cfg` of `model`'s network, bound to its parameters."""
    arch = registry.of_config(model.config).name
    return BatchDenoiser(arch, model.config, cfg).bind(params_of(model))


def assert_release_params(cfg: object, count: int) -> None:
    """The network of typed config `cfg`, in Flax and as its PyTorch twin, has `count` parameters
    (torch counts a shared module once, as the port holds it once)."""
    from ambsn_jax.convert.reference import twin_of

    model = nnx.eval_shape(lambda: registry.build(registry.of_config(cfg).name, cfg))
    assert n_params(model) == count
    assert sum(p.numel() for p in twin_of(cfg).parameters()) == count


def keys(n: int, seed: int = 0) -> jax.Array:
    return jax.random.split(jax.random.key(seed), n)


def sidd_blocks(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) uint8 blocks of SIDD_SHAPE: smooth gradients, plus Gaussian noise of sigma 20."""
    return sidd_blocks_of(*SIDD_SHAPE[2:4], seed)


def sidd_blocks_of(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`sidd_blocks` of 2 images x 2 blocks of h x w."""
    shape = (*SIDD_SHAPE[:2], h, w, 3)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = 60 + 6 * yy[..., None] + 4 * xx[..., None] + rng.uniform(0, 40, (*shape[:2], 1, 1, 3))
    clean = np.clip(base, 0, 255).astype(np.uint8)
    noisy = np.clip(clean + rng.normal(0, 20, shape), 0, 255).astype(np.uint8)
    return noisy, clean


def spec_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an official key list (tests/convert/keys/NAME)."""
    rows = [line.split("\t") for line in (KEY_LISTS / name).read_text().splitlines()[1:]]
    return {key: tuple(int(d) for d in shape.split("x")) for key, shape, *_ in rows}


def write_pth(path: Path, sd: dict[str, torch.Tensor], prefix: str = "bsn.", container: bool = True) -> Path:
    """Save `sd` (keys `bsn.*`) as the release does, or bare, with `prefix` instead of `bsn.`."""
    sd = {prefix + k.removeprefix("bsn."): v for k, v in sd.items()}
    torch.save({"epoch": 3, "model_weight": {"denoiser": sd}} if container else sd, path)
    return path


def printed_diffs(stdout: str) -> dict[str, float]:
    """The converter's printed max abs differences, by name."""
    return {name: float(value) for name, value in DIFF_LINE.findall(stdout)}


def one_error_line(stderr: str, fragment: str = "") -> str:
    """The one `error:` line of a refusal: the last line of stderr, no traceback, and no other
    line but the commands' notices before it (`weights:`, `note:`, a folder's `[i/n] a -> b`). Returns it."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), stderr
    assert all(line.startswith(("weights: ", "note: ")) or re.match(r"\[\d+/\d+\] ", line) for line in lines[:-1]), stderr
    assert fragment in lines[-1], stderr
    return lines[-1]


def assert_refused(rc: int, stderr: str, out: Path, fragment: str) -> None:
    """One `error:` line naming the problem, exit status 2, and nothing at or beside `out`."""
    assert rc == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    one_error_line(stderr, fragment)
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")), list(out.parent.iterdir())


def no_temp_files(root: Path) -> bool:
    return not list(root.rglob("*.tmp")) and not list(root.rglob(".*.tmp*"))


def flat(tree: dict, prefix: str = "") -> dict:
    """A nested dict as {"a.b": value}."""
    out = {}
    for key, value in tree.items():
        out |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value}
    return out


def str_argv(argv: Sequence) -> list[str]:
    return [str(a) for a in argv]


def psnr_u8(clean: np.ndarray, noisy: np.ndarray) -> float:
    """skimage's PSNR on the 0..255 scale."""
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(clean, noisy, data_range=255))


def neighbour_correlation(noisy: np.ndarray, clean: np.ndarray) -> float:
    """Correlation of the noise of horizontally adjacent pixels (axis -2 is the width)."""
    residual = noisy.astype(np.float64) - clean
    return float(np.corrcoef(residual[..., :-1, :].ravel(), residual[..., 1:, :].ravel())[0, 1])


def write_png(path: Path, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random uint8 pixels written as an image file (OpenCV order); returns them."""
    import cv2

    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), pixels)
    return pixels


def run_script(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Python `code` in a fresh CPU process on this checkout, its output captured."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", **(env or {})}
    cmd = [sys.executable, "-c", code]
    return subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def run_main(main, argv: Sequence, capsys) -> tuple[int, str, str]:
    """A command's `main(argv)` in-process: (exit status, stdout, stderr)."""
    code = main(str_argv(argv))
    out, err = capsys.readouterr()
    return code, out, err


def evaluate(argv: Sequence, capsys) -> tuple[int, str, str]:
    """`evaluate.py argv` in-process: (exit status, stdout, stderr)."""
    from ambsn_jax.cli.evaluate import main

    return run_main(main, argv, capsys)


def evaluate_report(argv: Sequence, capsys, tmp_path: Path, name: str = "report.json") -> dict:
    """The JSON report of a validation run of `evaluate.py argv`, which must succeed."""
    import json

    code, out, err = evaluate([*argv, "--json", tmp_path / name], capsys)
    assert code == 0, err
    return json.loads((tmp_path / name).read_text())


def block_numbers(rep: dict) -> np.ndarray:
    """(blocks, 2): each block's PSNR and SSIM in a validation report."""
    return np.array([[b["psnr"], b["ssim"]] for b in rep["blocks"]])


def fake_dnd(root: Path, images: list[np.ndarray], boxes: list[list[list[int]]]) -> Path:
    """The DND kit's layout in MATLAB v7.3: info.boundingboxes as a cell of per-image arrays."""
    import h5py

    (root / "images_srgb").mkdir(parents=True)
    with h5py.File(root / "info.mat", "w") as f:
        refs = [f.create_dataset(f"#refs#/b{i}", data=np.asarray(b, np.float64).T).ref for i, b in enumerate(boxes)]
        f.create_group("info").create_dataset("boundingboxes", data=np.array([refs], dtype=h5py.ref_dtype))
    for i, image in enumerate(images, start=1):
        with h5py.File(root / "images_srgb" / f"{i:04d}.mat", "w") as f:
            f.create_dataset("InoisySRGB", data=image.T)
    return root


def write_images(folder: Path, count: int, size: tuple[int, int] = (36, 44), seed: int = 0) -> list[Path]:
    """Smooth random colour images (blurred noise), as PNG files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image = cv2.GaussianBlur(rng.uniform(0, 255, (*size, 3)).astype(np.float32), (0, 0), 2)
        path = folder / f"img{i:02d}.png"
        cv2.imwrite(str(path), np.clip(image * 3 - 255, 0, 255).astype(np.uint8))
        paths.append(path)
    return paths


TMBSN_RELEASE_ENV = "AMBSN_TMBSN_RELEASE"


def tmbsn_release(file: str = "model/TMBSN.py"):
    """A file of the TM-BSN release (`model/TMBSN.py`, `model/NBSN102.py`, `utils.py`) as a
    module, from the checkout that AMBSN_TMBSN_RELEASE names, or a skip saying so (the release
    has no licence: this repository neither ships nor fetches its code)."""
    import importlib.util

    import pytest

    root = os.environ.get(TMBSN_RELEASE_ENV)
    if not root:
        pytest.skip(f"{TMBSN_RELEASE_ENV} is not set: point it at a checkout of the TM-BSN release to compare with its code")
    path = Path(root) / file
    if not path.is_file():
        pytest.fail(f"{TMBSN_RELEASE_ENV}={root}: has no {file}")
    spec = importlib.util.spec_from_file_location(f"tmbsn_release_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launched_pid(launcher: int, index: int) -> int:
    """The pid of process `index` that `ambsn-launch` (pid `launcher`) started."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == launcher:
                if f"JAX_PROCESS_ID={index}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    return int(entry.name)
        except OSError:
            continue
    raise AssertionError(f"no process {index} under {launcher}")

"""The Grain input pipeline (ambsn_jax.data.pipeline): crops, augmentation, hosts, resume."""

from __future__ import annotations

from pathlib import Path

import cv2
import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ambsn_jax.data.pipeline import augment, batch_iterator, fresh_noise_crop, random_crop, training_batches
from ambsn_jax.errors import UserError
from tests.helpers import write_images


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Six smooth random colour images of 36 x 44 (blurred noise), as PNG files."""
    folder = tmp_path_factory.mktemp("images")
    write_images(folder, 6)
    return folder


def test_augment_is_a_rotation_or_flip_of_the_crop():
    crop = np.arange(5 * 5 * 3).reshape(5, 5, 3)
    variants = [np.rot90(c, k) for c in (crop, crop[:, ::-1]) for k in range(4)]
    seen = set()
    for seed in range(64):
        out = augment(crop, np.random.default_rng(seed))
        matches = [i for i, v in enumerate(variants) if np.array_equal(out, v)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(range(8))


def test_batches_are_deterministic_crops_split_evenly_across_hosts(images):
    paths = sorted(images.glob("*.png"))
    one = training_batches(paths, crop=20, global_batch=4, seed=3)
    first = [one[i] for i in range(4)]
    assert first[0].shape == (4, 20, 20, 3) and first[0].dtype == np.float32
    assert 0 <= first[0].min() and first[0].max() <= 255 and first[0].std() > 1
    assert not np.array_equal(first[0], training_batches(paths, crop=20, global_batch=4, seed=4)[0])
    np.testing.assert_array_equal(training_batches(paths, crop=20, global_batch=4, seed=3)[2], first[2])
    # One epoch (6 images) spans batches 0 and 1: every image once, so no two crops alike.
    sources = np.concatenate(first[:2])[:6].reshape(6, -1)
    assert len({row.tobytes() for row in sources}) == 6
    halves = [training_batches(paths, crop=20, global_batch=4, seed=3, process_index=p, process_count=2) for p in (0, 1)]
    for b in range(4):
        np.testing.assert_array_equal(np.concatenate([halves[0][b], halves[1][b]]), first[b])


def test_crop_larger_than_an_image_is_a_user_error(images):
    batches = training_batches(sorted(images.glob("*.png")), crop=40, global_batch=2, seed=0)
    with pytest.raises(UserError, match=r"44x36 is smaller than the 40x40 training crop"):
        batches[0]


@pytest.mark.parametrize(("workers", "fresh_noise"), [(0, False), (2, False), (0, True)])
def test_restored_iterator_continues_the_exact_sequence(images, tmp_path, workers, fresh_noise):
    batches = training_batches(sorted(images.glob("*.png")), crop=20, global_batch=2, seed=5, fresh_noise=fresh_noise)
    it = batch_iterator(batches, workers)
    for _ in range(3):
        next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    want = [next(it) for _ in range(4)]
    it.close()
    fresh = batch_iterator(batches, workers)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    got = [next(fresh) for _ in range(4)]
    fresh.close()
    for g, w, index in zip(got, want, range(3, 7)):
        np.testing.assert_array_equal(g, w)
        np.testing.assert_array_equal(g, batches[index])


def test_aligned_images_are_cropped_and_turned_alike(images, tmp_path):
    """A (noisy, target) pair gives the same window of both, stacked along the channels, for
    every augmentation; images of different sizes are refused, naming the one to delete."""
    (noisy,) = write_images(tmp_path / "noisy", 1, size=(30, 26))
    target = tmp_path / "target.png"
    cv2.imwrite(str(target), cv2.imread(str(noisy)) // 2)
    for seed in range(8):
        crop = random_crop((str(noisy), str(target)), np.random.default_rng(seed), 12)
        assert crop.shape == (12, 12, 6)
        np.testing.assert_array_equal(crop[..., 3:], np.floor(crop[..., :3] / 2))
        np.testing.assert_array_equal(crop[..., :3], random_crop((str(noisy),), np.random.default_rng(seed), 12))
    (other,) = write_images(tmp_path / "other", 1, size=(30, 28))
    with pytest.raises(UserError, match=rf"^{other}: 28x30, but {noisy} is 26x30; delete {other}"):
        random_crop((str(noisy), str(other)), np.random.default_rng(0), 12)


def test_fresh_noise_pairs_never_repeat_and_are_the_same_on_every_run(tmp_path):
    """One clean image exactly the crop plus its noise margin: every epoch crops the same
    window, so plain crops of the whole image repeat (8 turns at most), while fresh-noise pairs differ in every
    epoch, are two different shots of the same window, and are drawn alike by a second run."""
    (clean,) = write_images(tmp_path, 1, size=(16, 16))
    plain = training_batches([clean], crop=16, global_batch=1, seed=2)
    assert len({plain[e].tobytes() for e in range(16)}) <= 8
    fresh = training_batches([clean], crop=12, global_batch=1, seed=2, fresh_noise=True)
    pairs = [fresh[e][0] for e in range(16)]
    assert pairs[0].shape == (12, 12, 6) and pairs[0].dtype == np.float32
    assert len({p.tobytes() for p in pairs}) == 16
    for pair in pairs:
        shots = pair[..., :3], pair[..., 3:]
        assert not np.array_equal(*shots)
        # The same window turned alike: the shots differ by noise only, far less than the content varies.
        assert np.corrcoef(shots[0].ravel(), shots[1].ravel())[0, 1] > 0.8
    again = training_batches([clean], crop=12, global_batch=1, seed=2, fresh_noise=True)
    np.testing.assert_array_equal(again[5][0], pairs[5])
    np.testing.assert_array_equal(fresh_noise_crop((str(clean),), np.random.default_rng(1), 12), fresh_noise_crop((str(clean),), np.random.default_rng(1), 12))

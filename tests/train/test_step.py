"""The objective, the optimizer and the jitted step (ambsn_jax.train.step) against PyTorch."""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from ambsn_jax.inference.release import pd_forward
from ambsn_jax.nets import registry
from ambsn_jax.nets.apbsn import APBSNConfig
from ambsn_jax.nets.mmbsn import MMBSNConfig
from ambsn_jax.nets.student import StudentConfig
from ambsn_jax.nets.tmbsn import TMBSNConfig
from ambsn_jax.train import config as configlib
from ambsn_jax.train.step import Recipe, TrainState, init_state, l1_loss, lr_schedule, optimizer, served, train_step

# Width 16: see tests/nets/test_apbsn.py.
NARROW = {"apbsn": APBSNConfig(base_ch=16), "mmbsn": MMBSNConfig(base_ch=16)}


def _blind_masks(cfg) -> dict:
    """Weight key -> the blind-spot pattern multiplied into it."""
    return {key.replace(".mask", ".weight"): m for key, (_, m) in registry.of_config(cfg).mask_map(cfg).items()}


def test_train_step_matches_pytorch(reference, flax_model):
    """Loss and gradients of one step equal the reference's L1 on its PD-5 forward."""
    cfg = configlib.resolve("sidd", [(["data", "dir"], "unused")])
    ref = reference(8).train()
    model = flax_model(8)
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    batch = np.random.default_rng(1).uniform(0, 255, (4, 20, 20, 3)).astype(np.float32)

    x = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())
    want_loss = torch.nn.functional.l1_loss(ref(x, pd=5), x)
    want_loss.backward()

    schedule = lr_schedule(cfg.optim, 10)
    tx = optimizer(cfg.optim, schedule)
    recipe = Recipe.of(cfg)
    train_state = TrainState(params, tx.init(params), jnp.zeros((), jnp.int32), jax.random.key(0), None)
    new_state, metrics = jax.jit(partial(train_step, graphdef, tx, schedule, recipe))(train_state, jnp.asarray(batch))
    grads = jax.jit(jax.grad(l1_loss), static_argnums=(1, 3))(params, graphdef, jnp.asarray(batch), recipe)

    assert abs(float(metrics["loss"]) - want_loss.item()) <= 1e-5 * want_loss.item()
    assert int(new_state.step) == 1 and float(metrics["lr"]) == pytest.approx(2e-4)
    # The reference masks its kernels in place, so autograd leaves gradients at blind taps;
    # the port masks inside the forward, where they are zero. Only the rest can match.
    masks = _blind_masks(model.config)
    paths = registry.of_config(model.config).key_map(model.config)
    want_sq = 0.0
    for name, p in ref.bsn.named_parameters():
        want = p.grad.numpy()
        if name in masks:
            want = want * masks[name]
        if name.endswith(".weight"):
            want = want.transpose(2, 3, 1, 0)
        got = grads
        for key in paths[name]:
            got = got[key]
        np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-4 * np.abs(want).max(), err_msg=name)
        want_sq += float(np.sum(want.astype(np.float64) ** 2))
    np.testing.assert_allclose(float(metrics["grad_norm"]), want_sq**0.5, rtol=1e-5)


@pytest.mark.parametrize("arch", list(NARROW))
def test_family_training_loss_and_grads_match_the_reference(flax_model, reference, arch):
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
    masks = _blind_masks(cfg)
    paths = registry.get(arch).key_map(cfg)
    flat = dict(nnx.to_flat_state(grads))
    named = dict(ref.bsn.named_parameters())  # shared modules once, under their first name
    assert len(named) == len(flat)
    for name, p in named.items():
        want = p.grad.numpy() * masks.get(name, 1)
        if name.endswith(".weight"):
            want = want.transpose(2, 3, 1, 0)
        got = np.asarray(flat[paths[name]].get_value())
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max(), err_msg=name)


def test_pd_shuffle_draws_a_sub_image_order_per_step(flax_model):
    """With the release's sub-image shuffle on, step s uses the order drawn from fold_in(key, s)."""
    cfg = configlib.resolve("sidd", [(["data", "dir"], "unused"), (["train", "pd_shuffle"], True)])
    graphdef, state = nnx.split(flax_model(8))
    params = nnx.to_pure_dict(state)
    batch = jnp.asarray(np.random.default_rng(2).uniform(0, 255, (2, 20, 20, 3)).astype(np.float32))
    schedule = lr_schedule(cfg.optim, 10)
    tx = optimizer(cfg.optim, schedule)
    key = jax.random.key(3)
    recipe = Recipe.of(cfg)
    train_state = TrainState(params, tx.init(params), jnp.asarray(5, jnp.int32), key, None)
    new_state, _ = jax.jit(partial(train_step, graphdef, tx, schedule, recipe))(train_state, batch)
    grad = jax.jit(jax.grad(l1_loss), static_argnums=(1, 3))

    def update(perm: jax.Array | None) -> np.ndarray:
        updates, _ = tx.update(grad(params, graphdef, batch, recipe, perm), train_state.opt_state, params)
        return np.concatenate([np.ravel(u) for u in jax.tree.leaves(updates)])

    got = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(params))])
    want = update(jax.random.permutation(jax.random.fold_in(key, 5), 25))
    unshuffled = update(None)
    scale = np.linalg.norm(want)
    assert np.linalg.norm(got - want) < 1e-3 * scale < np.linalg.norm(unshuffled - want)


def test_lr_schedule_is_the_release_step_decay():
    cfg = configlib.resolve("sidd", [(["data", "dir"], "unused")]).optim
    schedule = lr_schedule(cfg, steps_per_epoch=10)
    lrs = [float(schedule(s)) for s in (0, 79, 80, 159, 160)]
    np.testing.assert_allclose(lrs, [2e-4, 2e-4, 2e-5, 2e-5, 2e-6], rtol=1e-6)
    warm = lr_schedule(dataclasses.replace(cfg, warmup_steps=4), steps_per_epoch=10)
    np.testing.assert_allclose([float(warm(s)) for s in (0, 3, 80)], [5e-5, 2e-4, 2e-5], rtol=1e-6)


STEPS = 2


def _run_steps(overrides: list[tuple[list[str], object]], width: int = 8):
    """Losses and final state of STEPS jitted steps of a narrow AM-BSN on fixed batches."""
    cfg = configlib.resolve("sidd", [(["data", "dir"], "unused"), (["optim", "lr"], 1e-3), *overrides])
    recipe = Recipe.of(cfg)
    schedule = lr_schedule(cfg.optim, 10)
    tx = optimizer(cfg.optim, schedule)
    new_model = partial(registry.build, "ambsn", {"base_ch": width}, 0)
    state = jax.jit(partial(init_state, new_model, tx, 0, recipe))()
    step = jax.jit(partial(train_step, registry.graphdef("ambsn", {"base_ch": width}), tx, schedule, recipe))
    rng = np.random.default_rng(4)
    losses = []
    for _ in range(STEPS):
        state, metrics = step(state, jnp.asarray(rng.uniform(0, 255, (8, 20, 20, 3)), jnp.float32))
        losses.append(float(metrics["loss"]))
    return np.asarray(losses), state


@pytest.fixture(scope="module")
def plain():
    """The release's step, for the options below to be compared with (compiled once)."""
    return _run_steps([])


def test_accumulating_micro_batches_equals_the_whole_batch(plain):
    whole, a = plain
    parts, b = _run_steps([(["train", "accum_steps"], 4)])
    np.testing.assert_allclose(parts, whole, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(b.params), jax.tree.leaves(a.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_a_batch_that_does_not_split_into_the_micro_batches_is_refused():
    with pytest.raises(configlib.UserError, match="does not divide into train.accum_steps 3"):
        configlib.resolve("sidd", [(["data", "dir"], "unused"), (["train", "accum_steps"], 3)])


def test_the_moving_average_follows_the_parameters_and_is_served(plain):
    decay = 0.5
    _, without = plain
    _, state = _run_steps([(["optim", "ema_decay"], decay)])
    # The average does not change what training computes: the same parameters as without it.
    for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(without.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # After two steps from p0: ema = d^2 p0 + d (1 - d) p1 + (1 - d) p2, p1 unknown here, so
    # check the bounds instead: the average lies between the initial and the final weights.
    init = jax.jit(lambda: nnx.to_pure_dict(nnx.state(registry.build("ambsn", {"base_ch": 8}, 0), nnx.Param)))()
    for avg, new, old in zip(*(jax.tree.leaves(t) for t in (state.ema, state.params, init))):
        avg, new, old = map(np.asarray, (avg, new, old))
        lo, hi = np.minimum(new, old) - 1e-3, np.maximum(new, old) + 1e-3
        assert np.all((lo <= avg) & (avg <= hi)) and not np.array_equal(avg, new)
    assert served(state) is state.ema and served(without) is without.params


def test_bf16_training_keeps_float32_parameters_and_a_close_loss(plain):
    exact, _ = plain
    rounded, b = _run_steps([(["train", "precision"], "bf16")])
    assert {np.asarray(v).dtype for v in jax.tree.leaves(b.params)} == {np.dtype(np.float32)}
    assert {np.asarray(v).dtype for v in jax.tree.leaves(b.opt_state) if np.ndim(v)} == {np.dtype(np.float32)}
    gap = np.abs(rounded - exact) / exact
    assert 0 < gap.max() < 0.02, gap


def test_an_unknown_precision_is_refused():
    with pytest.raises(configlib.UserError, match="train.precision 'fp8'"):
        configlib.resolve("sidd", [(["data", "dir"], "unused"), (["train", "precision"], "fp8")])


def test_distillation_loss_and_gradients_match_the_pytorch_twin(flax_model, reference):
    """With a teacher, the loss is L1 between the student's output on the noisy half of the
    batch's channels and the teacher's half; its gradients are PyTorch's on the twin."""
    cfg = StudentConfig(base_ch=4, depth=2)
    model, twin = flax_model(cfg), reference(cfg).bsn.train()
    rng = np.random.default_rng(2)
    noisy, target = (rng.uniform(0, 255, (2, 12, 12, 3)).astype(np.float32) for _ in range(2))
    recipe = Recipe(pd=1, pd_pad=0, pd_shuffle=False, accum_steps=1, precision="highest", ema_decay=None, distill=True)
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    batch = jnp.asarray(np.concatenate([noisy, target], axis=-1))
    loss, grads = jax.value_and_grad(l1_loss)(params, graphdef, batch, recipe)

    def nchw(a):
        return torch.from_numpy(a.transpose(0, 3, 1, 2).copy())

    want = torch.nn.functional.l1_loss(twin(nchw(noisy)), nchw(target))
    want.backward()
    np.testing.assert_allclose(float(loss), want.item(), rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(grads["head"]["kernel"]), twin.head.weight.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-3, atol=1e-6
    )
    np.testing.assert_allclose(np.asarray(grads["tail"]["bias"]), twin.tail.bias.grad.numpy(), rtol=1e-3, atol=1e-6)


def test_tmbsn_loss_and_grads_are_its_release_objective(flax_model, reference):
    """train_tmbsn.py's L1(TM-BSN(noisy, 5), noisy) on 0..1, here on 0..255: 255x the loss and
    its gradients, which Adam's step does not see (its epsilon aside)."""
    cfg = TMBSNConfig(base_ch=8, blocks=1)
    model, twin = flax_model(cfg), reference(cfg).bsn.train()
    batch = np.random.default_rng(2).uniform(0, 255, (2, 12, 12, 3)).astype(np.float32)
    x = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy()) / 255.0
    want = torch.nn.functional.l1_loss(twin(x, 5), x)
    want.backward()
    recipe = Recipe(pd=1, pd_pad=0, pd_shuffle=False, accum_steps=1, precision="highest", ema_decay=None, hole=5)
    graphdef, params = nnx.split(model, nnx.Param)
    loss, grads = jax.jit(jax.value_and_grad(lambda p: l1_loss(p, graphdef, jnp.asarray(batch), recipe)))(nnx.to_pure_dict(params))
    assert abs(float(loss) - 255.0 * want.item()) <= 1e-5 * float(loss)
    got = np.asarray(grads["nin_A"]["kernel"])[0, 0]
    np.testing.assert_allclose(got, 255.0 * twin.nin_A.weight.grad.numpy()[:, :, 0, 0].T, rtol=0, atol=1e-4 * np.abs(got).max())


def test_cosine_schedule_is_the_tmbsn_release_scheduler():
    """Its CosineDecayScheduler, stepped after each update as train_tmbsn.py does, written out."""
    cfg = configlib.resolve("tmbsn_sidd", [(["data", "dir"], "unused")]).optim
    cfg = dataclasses.replace(cfg, hold_steps=20, decay_steps=30)

    def release_lr(update: int) -> float:
        step = max(update - 1, 0)  # the scheduler's step() runs after update i, setting update i + 1's lr
        if step < cfg.hold_steps:
            return cfg.lr
        done = step - cfg.hold_steps
        if done >= cfg.decay_steps:
            return cfg.final_lr
        return (cfg.lr - cfg.final_lr) * 0.5 * (1 + np.cos(np.pi * done / cfg.decay_steps)) + cfg.final_lr

    schedule = lr_schedule(cfg, steps_per_epoch=10)
    updates = [0, 1, 20, 21, 22, 35, 50, 51, 52, 80]
    np.testing.assert_allclose([float(schedule(u)) for u in updates], [release_lr(u) for u in updates], rtol=1e-5)


def test_a_recharged_step_is_the_release_loss_on_its_mixed_targets(flax_model, reference):
    """With the Recharger, the step's loss is the release's sum of L1s to the K targets after
    each pixel gave its noisy value to one of them: with K equal targets T that is
    (K - 1) L1(out, T) + L1(out, noisy) whichever target each pixel drew (unmixed: K L1(out, T))."""
    cfg = StudentConfig(base_ch=4, depth=2)
    model, twin = flax_model(cfg), reference(cfg).bsn.eval()
    rng = np.random.default_rng(3)
    noisy, target = (rng.uniform(0, 255, (2, 12, 12, 3)).astype(np.float32) for _ in range(2))
    k = 3
    batch = jnp.asarray(np.concatenate([noisy, *[target] * k], axis=-1))
    recipe = Recipe(pd=1, pd_pad=0, pd_shuffle=False, accum_steps=1, precision="highest", ema_decay=None, distill=True, recharge=k)
    assert recipe.batch_channels == 12
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    tx = optax.sgd(0.0)
    train_state = TrainState(params, tx.init(params), jnp.zeros((), jnp.int32), jax.random.key(0), None)
    _, metrics = jax.jit(partial(train_step, graphdef, tx, lambda s: 0.0, recipe))(train_state, batch)
    with torch.no_grad():
        out = twin(torch.from_numpy(noisy.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
    want = (k - 1) * np.abs(out - target).mean() + np.abs(out - noisy).mean()
    np.testing.assert_allclose(float(metrics["loss"]), want, rtol=1e-5)
    unmixed = l1_loss(params, graphdef, batch, recipe)
    np.testing.assert_allclose(float(unmixed), k * np.abs(out - target).mean(), rtol=1e-5)

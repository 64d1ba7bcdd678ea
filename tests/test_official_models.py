"""Flax's official examples swept as published: a named batch axis, call-time ``rngs``.

Flax's ImageNet ResNet normalises with ``nn.BatchNorm(..., axis_name="batch")`` (statistics
averaged over the replicas of a ``pmap``); its MNIST NNX CNN takes ``rngs`` in ``__call__`` and
is validated with ``model.eval()`` and ``rngs=None``. Each lane is checked against a loop
written here by hand with plain optax / ``nnx.Optimizer`` and the documented key contract
(as in ``test_models.py``): parameters from ``fold_in(per_seed, 0)``, the batch order of epoch
``e`` from ``fold_in(fold_in(per_seed, 1), e)``, the key of step ``t`` of epoch ``e`` from
``fold_in(fold_in(fold_in(per_seed, 2), e), t)``; a call-time ``rngs`` is ``nnx.Rngs`` of it.
"""

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SMALL
from flax import nnx

import jaxsweep
from jaxsweep import _model

pytestmark = pytest.mark.filterwarnings("ignore::jaxsweep.SearchRangeWarning")

RATES = (3e-3, 3e-2)
# The ImageNet example's optimizer. (Adam's first steps divide tiny gradients by their own size:
# float rounding, which differs between any two compiled programs, grows to 3e-4 in the
# ResNet's validation loss within six steps; plain SGD keeps two programs within 2e-7.)
SGD = partial(optax.sgd, momentum=0.9, nesterov=True)
RESNET_RATES = (1e-2, 1e-1)
EPOCHS, BATCH = SMALL["epochs"], SMALL["batch_size"]


def ce(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def contract_keys(seed: int = 0, seed_index: int = 0):
    per_seed = jax.random.fold_in(jax.random.key(seed), seed_index)
    return tuple(jax.random.fold_in(per_seed, i) for i in range(3))  # init, data, rng


def step_key(rng_key, epoch: int, step: int):
    return jax.random.fold_in(jax.random.fold_in(rng_key, epoch), step)


def epoch_order(data_key, epoch: int, n: int) -> np.ndarray:
    return np.asarray(jax.random.permutation(jax.random.fold_in(data_key, epoch), n))


def sweep(model_fn, data, **overrides):
    """Two rates, one seed, two epochs of three steps."""
    settings = dict(SMALL, stages=1, points_per_stage=2, lr_range=RATES)
    settings.update(overrides)
    return jaxsweep.run(model_fn, data, **settings)


def assert_lanes_match(result, loop, rtol=2e-5):
    assert len(result.evaluations) == len(RATES)
    for evaluation in result.evaluations:
        train_losses, val_losses = loop(evaluation.lr)
        np.testing.assert_allclose(evaluation.train_loss, train_losses, rtol=rtol)
        np.testing.assert_allclose(evaluation.val_loss, val_losses, rtol=rtol)


# ----------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def images():
    """8x8x1 images of three classes (a template each, plus noise): 96 to train, 32 to score."""
    rng = np.random.default_rng(0)
    templates = rng.normal(size=(3, 8, 8, 1))
    y = rng.integers(0, 3, size=128).astype(np.int32)
    x = (templates[y] + rng.normal(size=(128, 8, 8, 1))).astype(np.float32)
    return {"train": (x[:96], y[:96]), "val": (x[96:], y[96:])}


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 6)) * 2.0
    y = rng.integers(0, 3, size=128).astype(np.int32)
    x = (centres[y] + rng.normal(size=(128, 6))).astype(np.float32)
    return {"train": (x[:96], y[:96]), "val": (x[96:], y[96:])}


# ----------------------------------------------------------------------------- the ResNet


class ResNetBlock(nn.Module):
    """The block of Flax's ImageNet ResNet V1.5: conv, norm, act, conv, zero-init norm."""

    filters: int
    conv: nn.Module
    norm: nn.Module
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), self.strides)(x)))
        y = self.norm(scale_init=nn.initializers.zeros_init())(self.conv(self.filters, (3, 3))(y))
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return nn.relu(residual + y)


class ResNet(nn.Module):
    """Flax's ImageNet ResNet, tiny: BatchNorm over the named axis ``batch`` as published."""

    stage_sizes: tuple[int, ...] = (1, 1)
    num_classes: int = 3
    num_filters: int = 4
    axis_name: str | None = "batch"
    axis_index_groups: list | None = None

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = partial(nn.Conv, use_bias=False)
        norm = partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            axis_name=self.axis_name,
            axis_index_groups=self.axis_index_groups,
        )
        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = nn.relu(norm(name="bn_init")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, size in enumerate(self.stage_sizes):
            for j in range(size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = ResNetBlock(self.num_filters * 2**i, conv, norm, strides)(x)
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


def resnet_loop(lr, data, *, seed=0):
    """The plain Linen loop of the ResNet without an axis name: mutable batch_stats, SGD."""
    module = ResNet(axis_name=None)
    (x, y), (xv, yv) = data["train"], data["val"]
    init_key, data_key, _ = contract_keys(seed)
    variables = module.init(init_key, x[:1], train=False)
    params, stats = variables["params"], variables["batch_stats"]
    tx = SGD(lr)
    opt_state = tx.init(params)

    def loss_fn(params, stats, xb, yb):
        logits, updated = module.apply(
            {"params": params, "batch_stats": stats}, xb, train=True, mutable=["batch_stats"]
        )
        return ce(logits, yb), updated["batch_stats"]

    @jax.jit
    def step(params, stats, opt_state, xb, yb):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, xb, yb)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    @jax.jit
    def validate(params, stats):
        return ce(module.apply({"params": params, "batch_stats": stats}, xv, train=False), yv)

    train_losses, val_losses = [], []
    for epoch in range(EPOCHS):
        order, losses = epoch_order(data_key, epoch, len(x)), []
        for t in range(len(x) // BATCH):
            idx = order[t * BATCH : (t + 1) * BATCH]
            params, stats, opt_state, loss = step(params, stats, opt_state, x[idx], y[idx])
            losses.append(float(loss))
        train_losses.append(float(np.mean(losses)))
        val_losses.append(float(validate(params, stats)))
    return train_losses, val_losses


def sweep_resnet(model_fn, data, **overrides):
    return sweep(model_fn, data, optimizer=SGD, lr_range=RESNET_RATES, **overrides)


@pytest.fixture(scope="module")
def unnamed_resnet(images):
    """The ResNet without the axis name, swept (the reference for the named one)."""
    return sweep_resnet(lambda: ResNet(axis_name=None), images, lanes="vmap")


def test_the_named_axis_is_found_and_bound_only_where_used(images):
    x = images["train"][0][:2]
    assert _model.adapt(lambda: ResNet(), x).axis_names == ("batch",)
    assert _model.adapt(lambda: ResNet(axis_name=None), x).axis_names == ()
    # without binding, the published module cannot train outside a pmap: the engine's binding
    # is what makes the difference (this test fails if JAX ever bound such names itself)
    module = ResNet()
    variables = module.init(jax.random.key(0), x, train=False)
    with pytest.raises(NameError, match="unbound axis name: batch"):
        module.apply(variables, x, train=True, mutable=["batch_stats"])


def test_the_unnamed_resnet_lanes_equal_the_plain_loop(images, unnamed_resnet):
    assert unnamed_resnet.config["model_state"] == ["batch_stats"]
    assert_lanes_match(unnamed_resnet, lambda lr: resnet_loop(lr, images), rtol=1e-5)


# every lane strategy runs the bound axis: a vmap over lanes, lax.map, vmapped chunks, one
# compiled lane per call
@pytest.mark.parametrize("lanes", ["vmap", "map", "chunks:1", "separate"])
def test_batchnorm_over_a_named_axis_trains_as_the_network_without_it(
    images, unnamed_resnet, lanes
):
    named = sweep_resnet(lambda: ResNet(), images, lanes=lanes)
    assert named.environment["lanes"]["strategy"] == lanes
    assert [e.lr for e in named.evaluations] == [e.lr for e in unnamed_resnet.evaluations]
    for with_axis, without in zip(named.evaluations, unnamed_resnet.evaluations, strict=True):
        np.testing.assert_allclose(with_axis.train_loss, without.train_loss, rtol=1e-5)
        np.testing.assert_allclose(with_axis.val_loss, without.val_loss, rtol=1e-5)
    # the rates train apart: equal losses are not the same number everywhere
    assert not np.allclose(named.evaluations[0].val_loss, named.evaluations[1].val_loss)


def test_the_bound_axis_averages_over_one_replica_not_over_the_lanes(images):
    """Two lanes vmapped side by side with different inputs keep their own statistics."""
    x = images["train"][0][:8]
    model = _model.adapt(lambda: ResNet(), x)
    params, state = model.init(jax.random.key(0))
    inputs = np.stack([x, x[::-1] * 2.0 + 1.0])
    lanes = jax.vmap(model.train_apply, in_axes=(None, None, 0, None))
    outputs, states = lanes(params, state, inputs, jax.random.key(1))
    reference = ResNet(axis_name=None)
    for lane in range(2):
        expected, updated = reference.apply(
            {"params": params, **state}, inputs[lane], train=True, mutable=["batch_stats"]
        )
        np.testing.assert_allclose(outputs[lane], expected, rtol=1e-5, atol=1e-6)
        got = jax.tree.map(lambda a, lane=lane: a[lane], states["batch_stats"])
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
            got,
            updated["batch_stats"],
        )


def test_statistics_shared_between_replicas_cannot_run_in_a_lane(images):
    """Groups of replicas (axis_index_groups) need several replicas: a lane has one."""
    with pytest.raises(ValueError, match=r"'batch' is bound to each lane's own batch.*axis_index"):
        _model.adapt(lambda: ResNet(axis_index_groups=[[0, 1]]), images["train"][0][:2])


# ----------------------------------------------------------------------------- call-time rngs


class PositionalRngs(nnx.Module):
    """Flax's MNIST CNN in small: ``__call__(self, x, rngs)``, dropout drawn from ``rngs``,
    BatchNorm over the named batch axis."""

    def __init__(self, rngs: nnx.Rngs, rate: float = 0.3, axis_name: str | None = "batch"):
        self.hidden = nnx.Linear(6, 16, use_bias=False, rngs=rngs)
        self.norm = nnx.BatchNorm(16, momentum=0.8, axis_name=axis_name, rngs=rngs)
        self.dropout = nnx.Dropout(rate=rate)
        self.out = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x, rngs: nnx.Rngs):
        x = self.dropout(nnx.relu(self.norm(self.hidden(x))), rngs=rngs)
        return self.out(x)


class KeywordRngs(PositionalRngs):
    """The same network with an optional keyword: ``rngs: nnx.Rngs | None = None``."""

    def __call__(self, x, rngs: nnx.Rngs | None = None):
        return super().__call__(x, rngs)


def nnx_loop(model, lr, data, *, seed=0):
    """The plain NNX loop: train() with ``nnx.Rngs`` of each step's key, eval() with None."""
    (x, y), (xv, yv) = data["train"], data["val"]
    _, data_key, rng_key = contract_keys(seed)
    optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, xb, yb, key):
        loss, grads = nnx.value_and_grad(lambda m: ce(m(xb, nnx.Rngs(key)), yb))(model)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def validate(model):
        return ce(model(xv, None), yv)

    train_losses, val_losses = [], []
    for epoch in range(EPOCHS):
        order, losses = epoch_order(data_key, epoch, len(x)), []
        model.train()
        for t in range(len(x) // BATCH):
            idx = order[t * BATCH : (t + 1) * BATCH]
            key = step_key(rng_key, epoch, t)
            losses.append(float(step(model, optimizer, x[idx], y[idx], key)))
        model.eval()
        train_losses.append(float(np.mean(losses)))
        val_losses.append(float(validate(model)))
    return train_losses, val_losses


@pytest.mark.parametrize("model_cls", [PositionalRngs, KeywordRngs])
def test_call_time_rngs_lanes_equal_the_plain_nnx_loop(vectors, model_cls):
    result = sweep(model_cls, vectors)
    init_key = contract_keys()[0]
    # the loop runs the network without the axis name: same parameters, nothing to bind
    assert_lanes_match(
        result,
        lambda lr: nnx_loop(PositionalRngs(nnx.Rngs(init_key), axis_name=None), lr, vectors),
    )
    # the loop test can fail: without dropout the same lanes train differently
    no_dropout = nnx_loop(
        PositionalRngs(nnx.Rngs(init_key), rate=0.0, axis_name=None), RATES[0], vectors
    )
    assert not np.allclose(result.evaluations[0].train_loss, no_dropout[0], rtol=1e-3)


def test_call_time_rngs_draw_in_training_and_not_at_validation(vectors):
    x = vectors["train"][0][:8]
    model = _model.adapt(lambda rngs: PositionalRngs(rngs, axis_name=None), x)
    params, state = model.init(jax.random.key(0))
    first, _ = model.train_apply(params, state, x, jax.random.key(1))
    again, _ = model.train_apply(params, state, x, jax.random.key(1))
    other, _ = model.train_apply(params, state, x, jax.random.key(2))
    np.testing.assert_array_equal(first, again)  # the step key decides the mask
    assert not np.allclose(first, other)
    # validation: running statistics (fresh: mean 0, var 1), no dropout, by hand
    hidden = x @ params["hidden"]["kernel"]
    normed = hidden / np.sqrt(1.0 + 1e-5) * params["norm"]["scale"] + params["norm"]["bias"]
    expected = np.maximum(normed, 0) @ params["out"]["kernel"] + params["out"]["bias"]
    np.testing.assert_allclose(model.eval_apply(params, state, x), expected, rtol=1e-5, atol=1e-6)


class DrawsAtValidation(nnx.Module):
    """Uses its call-time rngs itself, whatever the mode: cannot validate with rngs=None."""

    def __init__(self, rngs: nnx.Rngs):
        self.out = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x, rngs: nnx.Rngs):
        return self.out(x + 0.1 * jax.random.normal(rngs.noise(), x.shape))


def test_a_model_that_needs_its_rngs_at_validation_is_told_what_the_sweep_passes(vectors):
    with pytest.raises(ValueError, match=r"evaluation mode.*eval\(\) mode with rngs=None"):
        _model.adapt(DrawsAtValidation, vectors["train"][0][:2])

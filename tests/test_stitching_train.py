"""Stitching frozen models: Theorem 4.2, selection on validation, vmapped pairs.

The models are small and trained here on scikit-learn's digits (offline, seconds).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from symjax import symmetry
from symjax.data import load_digits, normalize_digits
from symjax.models import get_model
from symjax.stitching import StitchConfig, stitch, stitch_pairs

FAST = {"augment": False, "batch_size": 64, "eval_batch_size": 360}


def _train(model, splits, seed=0, steps=300, lr=3e-3):
    """A plain Adam loop (BatchNorm statistics updated alongside)."""
    x0 = normalize_digits(splits.train.images[:2])
    variables = model.init(jax.random.key(seed), x0, train=False)
    tx = optax.adam(lr)
    opt_state = tx.init(variables["params"])

    @jax.jit
    def step(variables, opt_state, images, labels):
        def loss_fn(params):
            logits, updates = model.apply(
                {**variables, "params": params},
                normalize_digits(images),
                train=True,
                mutable=["batch_stats"],
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            return loss.mean(), updates

        grads, updates = jax.grad(loss_fn, has_aux=True)(variables["params"])
        steps, opt_state = tx.update(grads, opt_state, variables["params"])
        params = optax.apply_updates(variables["params"], steps)
        return {**variables, **updates, "params": params}, opt_state

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.choice(len(splits.train), 64, replace=False)
        variables, opt_state = step(
            variables, opt_state, splits.train.images[idx], splits.train.labels[idx]
        )
    return jax.device_get(variables)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def mlp(digits):
    model = get_model("mlp", widths=(24, 24))
    return model, _train(model, digits)


def _transformed(model, variables, seed=5):
    spec = model.symmetry_spec()
    elements = symmetry.sample(spec, jax.random.key(seed))
    return spec, elements, jax.device_get(symmetry.act(spec, variables, elements))


def _alive(model, variables, layer, digits):
    h = model.apply(variables, normalize_digits(digits.train.images), stop=layer)
    h = np.asarray(h).reshape(-1, h.shape[-1])
    return (h > 0).any(axis=0)


def _check_theorem_4_2(model, variables, digits, layer, config):
    spec, elements, transformed = _transformed(model, variables)
    A = elements[spec.layers[layer]]
    result = stitch(
        model,
        variables,
        model,
        transformed,
        layer,
        digits,
        config,
        preprocess=normalize_digits,
    )

    # f~_{<=l} = A f_{<=l} (eq. 3.5), so phi = A is the ideal stitching layer. A
    # channel of f~ that never fires (a dead unit) may be fed by any dead channel
    # of f, so the permutation is identifiable on the live channels only.
    live = _alive(model, transformed, layer, digits)
    assert live.mean() > 0.5
    np.testing.assert_array_equal(
        np.asarray(result.stitch_map.perm)[live], np.asarray(A.perm)[live]
    )
    np.testing.assert_allclose(
        np.asarray(result.stitch_map.scale)[live], np.asarray(A.scale)[live], rtol=0.1
    )
    assert result.accuracy_a == pytest.approx(result.accuracy_b, abs=1e-9)
    assert result.penalty <= 0.005
    assert result.diagnostics["rounding_marginal_error"] < 1e-2

    rank1 = stitch(
        model,
        variables,
        model,
        transformed,
        layer,
        digits,
        StitchConfig(method="low_rank", rank=1, epochs=3, **FAST),
        preprocess=normalize_digits,
    )
    assert rank1.penalty > 0.1


@pytest.mark.parametrize("layer", ["hidden0", "hidden1"])
def test_theorem_4_2_g_relu_recovers_the_symmetry(mlp, digits, layer):
    """Paper Theorem 4.2: G_ReLU stitching between f and f transformed by G_ReLU
    elements recovers the element at each ReLU layer at no penalty; rank 1 cannot."""
    model, variables = mlp
    config = StitchConfig(method="g_relu", epochs=2, finetune_epochs=1, **FAST)
    _check_theorem_4_2(model, variables, digits, layer, config)


@pytest.mark.slow
def test_theorem_4_2_on_a_convolutional_network(digits):
    """The same on every block of a Myrtle CNN with BatchNorm (1x1 stitching)."""
    model = get_model("myrtle", width=8)
    variables = _train(model, digits, steps=200)
    config = StitchConfig(method="g_relu", epochs=2, finetune_epochs=1, **FAST)
    for layer in model.layers:
        _check_theorem_4_2(model, variables, digits, layer, config)


def test_identity_stitch_of_a_model_with_itself_costs_nothing(mlp, digits):
    model, variables = mlp
    result = stitch(
        model,
        variables,
        model,
        variables,
        "hidden1",
        digits,
        StitchConfig(method="identity", **FAST),
        preprocess=normalize_digits,
    )
    assert result.penalty == 0.0
    assert result.test_accuracy == result.accuracy_a
    logits = model.apply(variables, normalize_digits(digits.val.images))
    val = float(np.mean(np.argmax(np.asarray(logits), -1) == digits.val.labels))
    assert result.val_accuracy == [pytest.approx(val, abs=1e-12)]
    json.dumps(result.to_record())


def _stitched_accuracy(model, va, vb, layer, hard, dataset):
    h = model.apply(va, normalize_digits(dataset.images), stop=layer)
    logits = model.apply(vb, hard.apply(h, -1), start=layer)
    return float(np.mean(np.argmax(np.asarray(logits), -1) == dataset.labels))


def test_epoch_is_chosen_on_validation_and_test_is_only_reported(mlp, digits):
    model, variables = mlp
    # Another model: the weights perturbed, so that stitching has work to do.
    leaves, treedef = jax.tree_util.tree_flatten(variables)
    rng = np.random.default_rng(1)
    other = jax.tree_util.tree_unflatten(
        treedef,
        [x + 0.3 * rng.standard_normal(x.shape).astype(x.dtype) for x in leaves],
    )
    config = StitchConfig(method="full", init="neutral", epochs=3, **FAST)
    result = stitch(
        model,
        variables,
        model,
        other,
        "hidden0",
        digits,
        config,
        preprocess=normalize_digits,
    )
    val = result.val_accuracy
    assert len(val) == config.epochs + 1
    assert result.chosen_epoch == int(np.argmax(val))
    hard = result.stitch_map
    np.testing.assert_allclose(
        _stitched_accuracy(model, variables, other, "hidden0", hard, digits.val),
        val[result.chosen_epoch],
        atol=1e-12,
    )
    test = _stitched_accuracy(model, variables, other, "hidden0", hard, digits.test)
    assert result.test_accuracy == pytest.approx(test, abs=1e-12)
    expected = (result.accuracy_a + result.accuracy_b) / 2 - test
    assert result.penalty == pytest.approx(expected, abs=1e-12)
    record = json.loads(json.dumps(result.to_record()))
    assert record["method"] == "full" and record["chosen_epoch"] == result.chosen_epoch


def test_pairs_trained_together_match_pairs_trained_alone(mlp, digits):
    model, variables = mlp
    _, _, transformed = _transformed(model, variables, seed=9)
    # A data-free start and plain SGD keep float32 rounding differences between
    # the vmapped and the single computation at rounding level (a least-squares
    # start amplifies them by its condition number, Adam by its rescaling).
    config = StitchConfig(
        method="sparse",
        init="neutral",
        optimizer="sgd",
        learning_rate=0.05,
        epochs=1,
        **FAST,
    )
    together = stitch_pairs(
        model,
        [variables, transformed],
        model,
        [transformed, variables],
        "hidden1",
        digits,
        config,
        preprocess=normalize_digits,
    )
    alone = stitch(
        model,
        transformed,
        model,
        variables,
        "hidden1",
        digits,
        config,
        preprocess=normalize_digits,
    )
    assert together[1].val_accuracy == pytest.approx(alone.val_accuracy, abs=1e-12)
    assert together[1].test_accuracy == pytest.approx(alone.test_accuracy, abs=1e-12)
    np.testing.assert_allclose(
        together[1].stitch_map.matrix, alone.stitch_map.matrix, rtol=1e-5, atol=1e-6
    )
    assert 0.0 < together[0].diagnostics["density"] <= 1.0


def test_stitch_rejects_bad_arguments(mlp, digits):
    model, variables = mlp
    with pytest.raises(ValueError, match="layer"):
        stitch(model, variables, model, variables, "block0", digits)
    wide = get_model("mlp", widths=(24, 30))
    wide_vars = jax.eval_shape(wide.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(ValueError, match="architecture"):
        stitch(model, variables, wide, wide_vars, "hidden1", digits)
    with pytest.raises(ValueError, match="method"):
        StitchConfig(method="birkhoff")
    with pytest.raises(ValueError, match="epsilon"):
        StitchConfig(epsilon_start=0.01, epsilon_end=0.1)
    with pytest.raises(ValueError, match="optimizer"):
        StitchConfig(optimizer="lbfgs")


def test_g_relu_relaxation_learns_from_a_neutral_start(mlp, digits):
    """The Sinkhorn-relaxed stage does the work by itself: from a neutral start
    (the uniform doubly-stochastic matrix), not the activation matching that
    ``init="match"`` uses, it matches most live units of f~ = A f to their
    source, far above chance (1/n), and the stitched network learns.

    It does not recover A exactly from there (about two thirds of the units on
    this 24-unit layer): the relaxed objective is not convex, which is why
    ``init="match"`` is the default.
    """
    model, variables = mlp
    spec, elements, transformed = _transformed(model, variables)
    A = elements[spec.layers["hidden1"]]
    config = StitchConfig(
        method="g_relu",
        init="neutral",
        epochs=6,
        finetune_epochs=1,
        learning_rate=3e-2,
        **FAST,
    )
    result = stitch(
        model,
        variables,
        model,
        transformed,
        "hidden1",
        digits,
        config,
        preprocess=normalize_digits,
    )
    live = _alive(model, transformed, "hidden1", digits)
    matched = np.asarray(result.stitch_map.perm)[live] == np.asarray(A.perm)[live]
    assert matched.mean() >= 0.5
    assert max(result.val_accuracy[1:]) > result.val_accuracy[0] + 0.3
    assert result.penalty < 0.1


def _teacher_splits(model, variables, n=(256, 64, 64), seed=0):
    """Random 32 x 32 images labelled by the network itself, so that its accuracy
    is 1 and a stitching layer must reproduce its function."""
    from symjax.data import ArrayDataset, Splits

    rng = np.random.default_rng(seed)

    def split(size, name):
        images = rng.integers(0, 256, size=(size, 32, 32, 3)).astype(np.uint8)
        logits = model.apply(variables, normalize_digits(images))
        return ArrayDataset(images, np.asarray(logits.argmax(-1), np.int32), name)

    return Splits(*(split(k, s) for k, s in zip(n, ("train", "val", "test"))))


@pytest.mark.parametrize(
    "activation",
    [{}, {"activation": "leaky_relu", "activation_params": {"negative_slope": 0.5}}],
    ids=["relu", "leaky_relu0.5"],
)
def test_theorem_4_2_in_a_residual_stream(activation):
    """ResNet20 (ReLU, and LeakyReLU as in the paper's appendix D.3): every block
    of a stage shares one tied element; stitching at a block output inside that
    stream recovers it."""
    model = get_model("resnet20", width_multiplier=0.25, **activation)
    x0 = np.zeros((1, 32, 32, 3), np.float32)
    variables = jax.device_get(model.init(jax.random.key(0), x0, train=False))
    splits = _teacher_splits(model, variables)
    spec, elements, transformed = _transformed(model, variables)
    layer = "stage1.block1"
    A = elements[spec.layers[layer]]
    config = StitchConfig(method="g_relu", epochs=1, finetune_epochs=1, **FAST)
    result = stitch(
        model,
        variables,
        model,
        transformed,
        layer,
        splits,
        config,
        preprocess=normalize_digits,
    )
    h = model.apply(transformed, normalize_digits(splits.train.images), stop=layer)
    live = np.asarray(h).reshape(-1, h.shape[-1]).max(axis=0) > 0
    assert live.mean() > 0.5
    np.testing.assert_array_equal(
        np.asarray(result.stitch_map.perm)[live], np.asarray(A.perm)[live]
    )
    assert result.accuracy_a == 1.0 and result.penalty <= 0.005

"""The rotation penalty (Section 3.3, Fig. 4): the transformation of one layer, its
exact undoing for group elements (Proposition 3.4), the impossibility of undoing a
random rotation, and the fine-tuning loop on small synthetic data."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symjax import rotation_penalty as rp
from symjax.data import ArrayDataset, Splits, normalize
from symjax.groups import Dense
from symjax.models import get_model

TOL = dict(rtol=1e-9, atol=1e-9)  # float64 throughout
LAYERS = ("block0", "block1", "block2", "block3")


@functools.cache
def _forward(model):
    """The jitted ``model.apply`` (eager float64 convolutions are slow)."""
    return jax.jit(model.apply, static_argnames=("train", "start", "stop"))


_features = jax.jit(rp.transformed_features, static_argnums=(0, 3))


@functools.cache
def _myrtle(activation="relu", batch_norm=False, seed=0):
    model = get_model(
        "myrtle",
        width=4,
        activation=activation,
        batch_norm=batch_norm,
        dtype=jnp.float64,
        param_dtype=jnp.float64,
    )
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(24, 16, 16, 3)))

    # He-scaled kernels, random BatchNorm statistics. (Drawn with numpy: compiling
    # jax.random for rank-4 shapes takes many seconds on CPU.)
    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "kernel" in name:
            fan_in = np.prod(leaf.shape[:-1])
            return rng.normal(scale=np.sqrt(2.0 / fan_in), size=leaf.shape)
        if "var" in name or "scale" in name:
            return rng.uniform(0.5, 2.0, size=leaf.shape)
        return rng.normal(scale=0.1, size=leaf.shape)

    shapes = jax.eval_shape(model.init, jax.random.key(0), x[:1])
    variables = jax.tree_util.tree_map_with_path(draw, shapes)

    # Each pre-activation is centred at its median on x (plus noise), so that no
    # ReLU unit is dead.
    @jax.jit
    def pre_activations(params):
        _, out = model.apply(
            {**variables, "params": params}, x, capture_intermediates=True
        )
        return out["intermediates"]

    params = jax.tree_util.tree_map(np.array, variables["params"])
    for i in range(4):
        name = f"bn{i}" if batch_norm else f"conv{i}"
        z = np.asarray(pre_activations(params)[name]["__call__"][0])
        noise = rng.normal(scale=0.1, size=z.shape[-1])
        params[name]["bias"] += noise - np.median(z.reshape(-1, z.shape[-1]), 0)
    variables = jax.tree_util.tree_map(jnp.asarray, {**variables, "params": params})
    return model, variables, x


def _draw(model, layer, kind, seed):
    spec = model.symmetry_spec()
    return rp.random_transform(spec, layer, kind, jax.random.key(seed), jnp.float64)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("layer", LAYERS)
def test_group_transform_is_undone_exactly(activation, layer):
    model, variables, x = _myrtle(activation)
    spec = model.symmetry_spec()
    A = _draw(model, layer, "group", 3)
    assert spec.spaces[layer].group.contains(A)
    moved = rp.transform_layer(spec, variables, layer, A)
    y = _forward(model)(variables, x)

    # The transformation changes the function ...
    assert np.abs(np.asarray(_forward(model)(moved, x) - y)).max() > 1e-3

    # ... moves the features by phi(A) (eq. 3.5) ...
    group = spec.spaces[layer].group
    np.testing.assert_allclose(
        _forward(model)(moved, x, stop=layer),
        group.phi(A).apply(_forward(model)(variables, x, stop=layer), -1),
        **TOL,
    )

    # ... and W_{l+1} -> W_{l+1} phi(A)^{-1} restores it, with no training.
    restored = rp.compensate(spec, moved, layer, group.phi(A).inverse())
    np.testing.assert_allclose(_forward(model)(restored, x), y, **TOL)


def _channels(h):
    return np.asarray(h).reshape(-1, h.shape[-1])


def _best_restoration(model, variables, x_fit, x_held, layer, A):
    """The least-squares ``B`` with ``B h' ~ h`` on ``x_fit`` (``h'``, ``h`` the
    transformed and original features), and on ``x_held`` its relative feature
    residual and the relative error of the logits after ``W_{l+1} -> W_{l+1} B``."""
    h_fit = _channels(_forward(model)(variables, x_fit, stop=layer))
    t_fit = _channels(_features(model, variables, x_fit, layer, A))
    BT, *_ = np.linalg.lstsq(t_fit, h_fit, rcond=None)
    B = Dense(jnp.asarray(BT.T))

    h = _channels(_forward(model)(variables, x_held, stop=layer))
    t = _channels(_features(model, variables, x_held, layer, A))
    feature_error = np.linalg.norm(t @ BT - h) / np.linalg.norm(h)

    spec = model.symmetry_spec()
    moved = rp.compensate(spec, rp.transform_layer(spec, variables, layer, A), layer, B)
    y = _forward(model)(variables, x_held)
    logit_error = np.linalg.norm(_forward(model)(moved, x_held) - y) / np.linalg.norm(
        y - y.mean(0, keepdims=True)
    )
    return feature_error, logit_error


@pytest.mark.parametrize("layer", LAYERS)
def test_orthogonal_transform_cannot_be_undone(layer):
    model, variables, x = _myrtle("relu")
    x_fit, x_held = x[:16], x[16:]

    # Control: for a group element the least-squares B recovers phi(A)^{-1}.
    A = _draw(model, layer, "group", 4)
    feature_error, logit_error = _best_restoration(
        model, variables, x_fit, x_held, layer, A
    )
    assert feature_error < 1e-8 and logit_error < 1e-8

    # A random rotation: no B restores the features or the outputs.
    A = _draw(model, layer, "orthogonal", 4)
    feature_error, logit_error = _best_restoration(
        model, variables, x_fit, x_held, layer, A
    )
    assert feature_error > 0.2
    assert logit_error > 0.05


def test_orthogonal_draw_is_orthogonal_and_not_in_group():
    model, _, _ = _myrtle("relu")
    spec = model.symmetry_spec()
    A = _draw(model, "block1", "orthogonal", 0)
    np.testing.assert_allclose(A.A.T @ A.A, np.eye(8), atol=1e-12)
    assert not spec.spaces["block1"].group.contains(A)


def test_intercepted_transform_matches_weight_transform():
    model, variables, x = _myrtle("relu")
    A = _draw(model, "block1", "orthogonal", 1)
    by_weights = rp._Cut.build(model, "block1", via="weights")
    by_intercept = rp._Cut.build(model, "block1", via="intercept")
    np.testing.assert_allclose(
        by_intercept.front(variables, A, x), by_weights.front(variables, A, x), **TOL
    )


def test_batch_norm_model_applies_A_after_batch_norm():
    model, variables, x = _myrtle("relu", batch_norm=True)
    spec = model.symmetry_spec()
    A = _draw(model, "block2", "group", 2)
    with pytest.raises(ValueError, match="BatchNorm"):
        rp.transform_layer(spec, variables, "block2", A)

    # sigma(A BN(z)) = phi(A) sigma(BN(z)) for A in the group.
    np.testing.assert_allclose(
        _features(model, variables, x, "block2", A),
        A.apply(_forward(model)(variables, x, stop="block2"), -1),
        **TOL,
    )


def test_rejects_bad_arguments():
    model, _, _ = _myrtle("relu")
    spec = model.symmetry_spec()
    with pytest.raises(ValueError, match="kind"):
        rp.random_transform(spec, "block0", "rotation", jax.random.key(0))
    with pytest.raises(ValueError, match="layer"):
        rp.random_transform(spec, "conv0", "group", jax.random.key(0))
    resnet = get_model("resnet20", width_multiplier=1)
    with pytest.raises(ValueError, match="sequential"):
        rp.layer_space(resnet.symmetry_spec(), resnet.layers[1])
    with pytest.raises(ValueError, match="cut point"):
        rp._Cut.build(resnet, "stage0.block0.inner")
    with pytest.raises(ValueError, match="optimizer"):
        rp.FinetuneConfig(optimizer="lbfgs")
    for field, value in [
        ("learning_rate", float("inf")),
        ("learning_rate", 0.0),
        ("learning_rate", ()),
        ("learning_rate", (1e-3, -1e-3)),
        ("learning_rate", (1e-3, 1e-3)),
        ("weight_decay", float("nan")),
        ("momentum", -0.5),
    ]:
        with pytest.raises(ValueError, match=field):
            rp.FinetuneConfig(**{field: value})


# ---------------------------------------------------------------------------
# Fine-tuning on synthetic data labelled by the base network itself (a teacher),
# so that the untransformed network is exact and the transformed ones must relearn.


def _preprocess(images):
    return normalize(images).astype(jnp.float64)


@functools.cache
def _teacher_splits(batch_norm=False):
    model, variables, _ = _myrtle("relu", batch_norm)
    rng = np.random.default_rng(5)

    def split(n, name):
        images = rng.integers(0, 256, size=(n, 16, 16, 3)).astype(np.uint8)
        logits = _forward(model)(variables, _preprocess(images))
        return ArrayDataset(images, np.asarray(logits.argmax(-1), np.int32), name)

    return Splits(split(96, "train"), split(40, "val"), split(40, "test"))


def test_identity_control_at_epoch_zero_is_the_original_network():
    model, variables, _ = _myrtle("relu")
    config = rp.FinetuneConfig(
        epochs=2, batch_size=32, learning_rate=3e-3, eval_batch_size=40
    )
    (result,) = rp.run_trials(
        model,
        variables,
        _teacher_splits(),
        "block1",
        "identity",
        [0],
        config,
        preprocess=_preprocess,
    )
    assert result["acc_before"] == 1.0 and result["val_acc_before"] == 1.0
    assert result["test_acc"][0] == result["acc_before"]
    assert result["val_acc"][0] == result["val_acc_before"]
    assert result["test_acc"][1:] == [None, None]
    assert len(result["val_acc"]) == config.epochs + 1


def test_trials_choose_their_epoch_on_validation_and_match_single_runs():
    model, variables, _ = _myrtle("relu")
    config = rp.FinetuneConfig(
        epochs=3,
        batch_size=32,
        learning_rate=3e-3,
        eval_batch_size=40,
        augment_pad=0,
        test_every_epoch=True,
    )
    splits = _teacher_splits()
    batch = rp.run_trials(
        model,
        variables,
        splits,
        "block1",
        "orthogonal",
        [0, 1, 2],
        config,
        preprocess=_preprocess,
    )
    discriminating = 0
    for r in batch:
        best = r["best_epoch"]
        assert r["val_acc"][best] == max(r["val_acc"])
        assert best == r["val_acc"].index(max(r["val_acc"]))
        # The weights kept aside at the chosen epoch are that epoch's weights.
        assert r["acc_after"] == r["test_acc"][best]
        assert r["penalty"] == pytest.approx(r["acc_before"] - r["acc_after"], abs=0)
        discriminating += r["test_acc"][best] != r["test_acc"][-1]
        # Fine-tuning trains: the last epoch's loss is below the first's.
        assert r["train_loss"][-1] < r["train_loss"][0]
    assert discriminating >= 1  # some trial's chosen epoch is not its last

    # A trial trained alone matches the same trial trained with others; different
    # seeds draw different rotations, hence different trials.
    single = rp.run_rotation_penalty(
        model,
        variables,
        splits,
        "block1",
        "orthogonal",
        0,
        config,
        preprocess=_preprocess,
    )
    assert single["val_acc"] == batch[0]["val_acc"]
    assert single["test_acc"] == batch[0]["test_acc"]
    np.testing.assert_allclose(single["train_loss"], batch[0]["train_loss"], rtol=1e-9)
    assert batch[0]["train_loss"] != batch[1]["train_loss"]


def test_a_learning_rate_grid_runs_each_rate_as_alone_and_chooses_on_validation():
    model, variables, _ = _myrtle("relu")
    splits = _teacher_splits()
    options = dict(epochs=2, batch_size=32, eval_batch_size=40, augment_pad=0)
    rates = (3e-4, 1e-2)

    def run(learning_rate):
        config = rp.FinetuneConfig(
            learning_rate=learning_rate, test_every_epoch=True, **options
        )
        return rp.run_trials(
            model,
            variables,
            splits,
            "block1",
            "group",
            [0, 1],
            config,
            preprocess=_preprocess,
        )

    grid = run(rates)
    alone = [run(rate) for rate in rates]
    for i, r in enumerate(grid):
        # Scaling a unit-rate update by each member's rate is the optimizer at
        # that rate, on the same A and data order.
        for g, rate in enumerate(rates):
            single = alone[g][i]
            assert r["val_acc_by_rate"][g] == single["val_acc"]
            assert r["test_acc_by_rate"][g] == single["test_acc"]
            np.testing.assert_allclose(
                r["train_loss_by_rate"][g], single["train_loss"], rtol=1e-9
            )
        # The rates train differently, and epoch 0 is shared.
        assert r["train_loss_by_rate"][0] != r["train_loss_by_rate"][1]
        assert r["val_acc_by_rate"][0][0] == r["val_acc_by_rate"][1][0]

        # The choice: the first (rate, epoch) of highest validation accuracy,
        # reported with that member's weights.
        flat = [v for curve in r["val_acc_by_rate"] for v in curve]
        g, epoch = divmod(flat.index(max(flat)), options["epochs"] + 1)
        assert (r["learning_rate"], r["best_epoch"]) == (rates[g], epoch)
        assert r["val_acc"] == r["val_acc_by_rate"][g]
        assert r["acc_after"] == r["test_acc_by_rate"][g][epoch]
        assert r["penalty"] == r["acc_before"] - r["acc_after"]
    assert rp.FinetuneConfig(learning_rate=[1e-3, 1e-2]).learning_rate == (1e-3, 1e-2)
    with pytest.raises(ValueError, match="grid"):
        rp.make_optimizer(rp.FinetuneConfig(learning_rate=rates), 10)


def test_batch_norm_model_fine_tunes():
    model, variables, _ = _myrtle("relu", batch_norm=True)
    config = rp.FinetuneConfig(epochs=1, batch_size=32, eval_batch_size=40)
    (result,) = rp.run_trials(
        model,
        variables,
        _teacher_splits(batch_norm=True),
        "block1",
        "identity",
        [1],
        config,
        preprocess=_preprocess,
    )
    # The intercepted front and the later layers with their running statistics
    # reproduce the network.
    assert result["acc_before"] == 1.0 and result["val_acc_before"] == 1.0
    assert result["test_acc"][0] == 1.0 and result["val_acc"][0] == 1.0
    assert np.isfinite(result["train_loss"]).all()


# ---------------------------------------------------------------------------
# The experiment's summary and figure, on made-up records.


def test_experiment_summary_and_figure(tmp_path):
    from experiments import rotation_penalty as experiment

    records = []
    for kind, penalties in (("group", [0.01, 0.03, 0.02]), ("orthogonal", [0.2, 0.1])):
        for t, p in enumerate(penalties):
            records.append(
                {
                    "activation": "relu",
                    "layer": "block1",
                    "layer_index": 1,
                    "kind": kind,
                    "trial": t,
                    "penalty": p,
                    "acc_before": 0.8,
                    "acc_after": 0.8 - p,
                    "test_acc": [0.5, None],
                    "best_epoch": 1,
                    "learning_rate": 1e-3 if t else 1e-2,
                }
            )
    summaries = experiment.summarize(records)
    group, orthogonal = summaries
    assert (group.kind, group.trials, orthogonal.trials) == ("group", 3, 2)
    assert group.penalty == pytest.approx(0.02, abs=1e-12)
    # Student-t interval: t_{0.975, 2} = 4.3027 times the standard error.
    assert group.ci95 == pytest.approx(4.302653 * 0.01 / np.sqrt(3), rel=1e-5)
    assert orthogonal.penalty_no_finetune == pytest.approx(0.3, abs=1e-12)
    assert group.rates_chosen == "0.001 x2, 0.01 x1"

    csv_path = experiment.write_csv(summaries, tmp_path / "rp.csv")
    lines = csv_path.read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("activation,layer,layer_index")
    figure = experiment.plot(summaries, tmp_path / "figure4.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

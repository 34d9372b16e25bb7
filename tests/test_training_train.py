"""The vmapped training loop: exact resumption, determinism, selection on
validation, one compilation per step function."""

import dataclasses

import jax
import numpy as np
import pytest
from training_testing import TinyNet, compilation_cache, random_splits

from symjax.training import (
    RunDirectory,
    TrainConfig,
    create_states,
    epoch_batches,
    fit,
    make_eval_step,
    make_optimizer,
    make_train_step,
    pad_seeds,
    seed_mesh,
)
from symjax.training.train import evaluate, state_variables

CONFIG = TrainConfig(
    arch="tiny",
    epochs=3,
    batch_size=16,
    seeds=(0, 1),
    log_every=2,
    eval_batch_size=12,
)
TIMING = ("step_time_s", "images_per_s", "eval_time_s")


class _Killed(Exception):
    pass


@pytest.fixture(scope="module", autouse=True)
def fast_compilation(tmp_path_factory):
    """Repeated runs compile their (identical) steps once, and the non-
    partitionable threefry compiles several times faster on the CPU."""
    old = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", False)
    with compilation_cache(tmp_path_factory.mktemp("jax_cache")):
        yield
    jax.config.update("jax_threefry_partitionable", old)


@pytest.fixture(scope="module")
def splits():
    return random_splits()


@pytest.fixture(scope="module")
def uninterrupted(splits, tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    workdirs = [root / f"seed_{s}" for s in CONFIG.seeds]
    return fit(TinyNet(), CONFIG, splits, workdirs=workdirs, progress=False), workdirs


def _without_timing(history):
    return [
        [{k: v for k, v in r.items() if k not in TIMING} for r in h] for h in history
    ]


def _assert_same_tree(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_killed_run_resumes_to_identical_weights(
    splits, uninterrupted, tmp_path, monkeypatch
):
    # Kill while saving epoch 2: seed 0 has saved it, seed 1 has not, and both
    # have written epoch 2's metrics. The restart must fall back to epoch 1.
    want, _ = uninterrupted
    workdirs = [tmp_path / f"seed_{s}" for s in CONFIG.seeds]
    original = RunDirectory.save_state

    def save_or_die(self, epoch, state):
        if epoch == 2 and self.path.name == "seed_1":
            raise _Killed
        original(self, epoch, state)

    monkeypatch.setattr(RunDirectory, "save_state", save_or_die)
    with pytest.raises(_Killed):
        fit(TinyNet(), CONFIG, splits, workdirs=workdirs, progress=False)
    monkeypatch.setattr(RunDirectory, "save_state", original)
    assert RunDirectory(workdirs[0]).epochs_saved() == [1, 2]
    assert RunDirectory(workdirs[1]).epochs_saved() == [1]

    got = fit(TinyNet(), CONFIG, splits, workdirs=workdirs, progress=False)
    _assert_same_tree(got.state, want.state)
    _assert_same_tree(got.best_variables, want.best_variables)
    assert got.records == want.records
    assert _without_timing(got.history) == _without_timing(want.history)
    for path in workdirs:
        epochs = [r["epoch"] for r in RunDirectory(path).read_metrics()]
        assert epochs == sorted(epochs)  # no record of a dropped epoch survives


def test_relative_run_directories_work(splits, tmp_path, monkeypatch):
    """orbax writes only to absolute paths; a relative --out must still work."""
    monkeypatch.chdir(tmp_path)
    config = dataclasses.replace(CONFIG, epochs=1)
    got = fit(TinyNet(), config, splits, workdirs=["a/seed_0", "a/seed_1"])
    assert RunDirectory("a/seed_0").epochs_saved() == [1]
    epoch, best = RunDirectory("a/seed_1").restore_best()
    assert epoch == got.records[1]["best_epoch"]
    _assert_same_tree(best, jax.tree.map(lambda v: v[1], got.best_variables))


def test_same_seeds_give_identical_metrics_and_weights(splits, uninterrupted):
    want, _ = uninterrupted
    got = fit(TinyNet(), CONFIG, splits, progress=False)
    assert _without_timing(got.history) == _without_timing(want.history)
    _assert_same_tree(got.state, want.state)


def test_records_select_on_validation_and_report_test(splits, uninterrupted):
    result, workdirs = uninterrupted
    mesh = seed_mesh()
    eval_step = make_eval_step(TinyNet(), mesh)

    for k, (record, path) in enumerate(zip(result.records, workdirs, strict=True)):
        evals = [r for r in result.history[k] if r["kind"] == "eval"]
        assert len(evals) == CONFIG.epochs  # test accuracy after every epoch
        val = [r["val_accuracy"] for r in evals]
        chosen = evals[int(np.argmax(val))]  # the first best epoch
        assert record["best_epoch"] == chosen["epoch"]
        assert record["test_accuracy"] == chosen["test_accuracy"]
        assert RunDirectory(path).read_done() == record
    # The kept variables reproduce the recorded validation accuracies.
    scores = evaluate(eval_step, result.best_variables, splits.val, 12, mesh)
    np.testing.assert_allclose(
        scores["accuracy"], [r["val_accuracy"] for r in result.records], atol=1e-12
    )


def test_seeds_train_independently_of_their_companions(splits, uninterrupted):
    # Seed 1 trained alone follows the same path as next to seed 0.
    want, _ = uninterrupted
    alone = fit(
        TinyNet(), dataclasses.replace(CONFIG, seeds=(1,)), splits, progress=False
    )
    together = jax.tree.map(lambda x: x[1:], want.state)
    for x, y in zip(jax.tree.leaves(alone.state), jax.tree.leaves(together)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    assert alone.records[0]["seed"] == 1


def test_without_validation_the_last_epoch_is_kept(splits):
    no_val = splits._replace(val=splits.val.take(np.arange(0)))
    config = dataclasses.replace(CONFIG, seeds=(3,))
    result = fit(TinyNet(), config, no_val, progress=False)
    (record,) = result.records
    assert record["best_epoch"] == 3 and record["selected_on"] == "last_epoch"
    assert record["val_accuracy"] is None
    assert record["test_accuracy"] == record["final_test_accuracy"]


def test_steps_compile_once(splits):
    model, mesh, config = TinyNet(), seed_mesh(), CONFIG.resolved()
    # The optimiser of `fit` with CONFIG (so the compilation cache serves it).
    tx = make_optimizer("cpu", steps_per_epoch=4, epochs=config.epochs)
    step = make_train_step(model, tx, mesh, pad=config.pad)
    eval_step = make_eval_step(model, mesh)
    state = create_states(model, tx, config.seeds, (8, 8, 3), mesh)
    for epoch in range(2):
        for batch in epoch_batches(splits.train, config.seeds, epoch, 16):
            state, _ = step(state, *batch)
        # 20 test images in batches of 12: the short batch is padded.
        evaluate(eval_step, state_variables(state), splits.test, 12, mesh)
    assert step._cache_size() == 1
    assert eval_step._cache_size() == 1
    assert np.asarray(state.step).tolist() == [8, 8]


def test_a_directory_of_another_configuration_is_refused(
    splits, uninterrupted, tmp_path
):
    _, workdirs = uninterrupted
    other = dataclasses.replace(CONFIG, learning_rate=0.5)
    with pytest.raises(ValueError, match="another configuration"):
        fit(TinyNet(), other, splits, workdirs=workdirs, progress=False)


def test_pad_seeds_repeats_the_last_seed():
    assert pad_seeds([4, 7, 9], 2) == ((4, 7, 9, 9), 3)
    assert pad_seeds([4, 7], 2) == ((4, 7), 2)
    with pytest.raises(ValueError):
        pad_seeds([], 2)


def test_config_validation():
    with pytest.raises(ValueError, match="distinct"):
        TrainConfig(seeds=(1, 1))
    with pytest.raises(ValueError, match="conv_impl"):
        TrainConfig(conv_impl="fft")
    with pytest.raises(ValueError, match="recipe"):
        TrainConfig(recipe="sgd")
    config = TrainConfig(model={"width": 16}, seeds=(2, 3))
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.resolved().run_name == "myrtle_width16"

"""The zoo: layout, listing, loading, skipping finished seeds, the command line."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from training_testing import compilation_cache, random_splits

from experiments import train_zoo as cli
from symjax.training import (
    TrainConfig,
    evaluate,
    list_zoo,
    load_zoo_member,
    make_eval_step,
    member_dir,
    seed_mesh,
    train_zoo,
)
from symjax.training import train as train_module

CONFIG = TrainConfig(
    arch="mlp",
    model={"widths": [8], "num_classes": 3},
    epochs=2,
    batch_size=16,
    seeds=(0, 1),
    log_every=4,
    eval_batch_size=10,
)


@pytest.fixture(scope="module", autouse=True)
def fast_compilation(tmp_path_factory):
    old = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", False)
    with compilation_cache(tmp_path_factory.mktemp("jax_cache")):
        yield
    jax.config.update("jax_threefry_partitionable", old)


@pytest.fixture(scope="module")
def splits():
    return random_splits()


@pytest.fixture(scope="module")
def zoo(splits, tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    records = train_zoo(CONFIG, splits, root, progress=False)
    return root, records


def test_layout_and_listing(zoo):
    root, records = zoo
    name = CONFIG.resolved().run_name
    assert name == "mlp_num_classes3_widths8"
    members = [member_dir(root, name, s) for s in CONFIG.seeds]
    assert list_zoo(root) == members
    assert list_zoo(root / name) == members
    assert list_zoo(members[1]) == [members[1]]
    for path, record in zip(members, records, strict=True):
        assert json.loads((path / "done.json").read_text()) == record
        stored = json.loads((path / "config.json").read_text())
        assert stored["seed"] == record["seed"] and stored["input_shape"] == [8, 8, 3]


def test_loaded_member_reproduces_its_record(zoo, splits):
    root, records = zoo
    path = list_zoo(root)[1]
    model, variables, info = load_zoo_member(path)
    assert model.widths == (8,) and set(variables) == {"params"}
    assert info["seed"] == 1 and info["config"]["arch"] == "mlp"
    assert info == dict(records[1], config=info["config"], path=str(path))
    # Evaluate the loaded weights as a stack of one seed.
    mesh = seed_mesh()
    stacked = jax.tree.map(lambda x: np.asarray(x)[None], variables)
    scores = evaluate(make_eval_step(model, mesh), stacked, splits.test, 10, mesh)
    np.testing.assert_allclose(scores["accuracy"], [info["test_accuracy"]], atol=1e-12)


def test_rerun_trains_only_missing_seeds(zoo, splits, monkeypatch):
    root, records = zoo
    done = [p / "done.json" for p in list_zoo(root)]
    stamps = [p.stat().st_mtime_ns for p in done]
    calls = []
    real_fit = train_module.fit

    def spy(model, config, *args, **kwargs):
        calls.append(config.seeds)
        return real_fit(model, config, *args, **kwargs)

    monkeypatch.setattr(train_module, "fit", spy)
    # Two new seeds, so that the step of the first run (two seeds) is reused.
    more = dataclasses.replace(CONFIG, seeds=(0, 1, 2, 3))
    again = train_zoo(more, splits, root, progress=False)
    assert calls == [(2, 3)]
    assert again[:2] == records
    assert [p.stat().st_mtime_ns for p in done] == stamps


def test_finished_member_of_another_configuration_is_refused(zoo, splits):
    root, _ = zoo
    other = dataclasses.replace(CONFIG, learning_rate=0.3)
    with pytest.raises(ValueError, match="another configuration"):
        train_zoo(other, splits, root, progress=False)


def test_unfinished_directory_is_not_a_member(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a finished zoo member"):
        load_zoo_member(tmp_path)
    assert list_zoo(tmp_path) == []


def test_command_line_configuration():
    assert cli.parse_seeds("0-3") == (0, 1, 2, 3)
    assert cli.parse_seeds("0,4,7-8") == (0, 4, 7, 8)
    args = cli.build_parser().parse_args(
        ["--arch", "myrtle", "--width", "16", "--seeds", "2-3", "--recipe", "paper"]
    )
    config = cli.config_from_args(args)
    assert config.model == {"width": 16} and config.seeds == (2, 3)
    assert (config.epochs, config.batch_size, config.pad) == (50, 32, 2)
    assert config.run_name == "myrtle_width16"

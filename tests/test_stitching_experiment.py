"""The stitching experiment end to end on the real CIFAR-10 copy, kept small."""

import csv
import json

import pytest

from experiments import stitch as experiment


def test_method_names_and_summary():
    assert experiment.parse_method("low_rank:4") == {"method": "low_rank", "rank": 4}
    assert experiment.parse_method("g_relu") == {"method": "g_relu"}
    with pytest.raises(Exception, match="unknown"):
        experiment.parse_method("birkhoff")
    with pytest.raises(Exception, match="rank"):
        experiment.parse_method("full:2")

    records = [
        {
            "group": "g",
            "layer_index": 1,
            "layer": "b1",
            "method": "full",
            "penalty": p,
            "test_accuracy": 0.5,
            "accuracy_a": 0.6,
            "accuracy_b": 0.6,
        }
        for p in (0.01, 0.03)
    ]
    (row,) = experiment.summarize(records)
    assert row["pairs"] == 2
    assert row["penalty_pp"] == pytest.approx(2.0)
    # Student t with one degree of freedom: 12.706 * s / sqrt(2), s = sqrt(2).
    assert row["penalty_pp_ci95"] == pytest.approx(12.706, abs=1e-3)


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory, cifar_dir):
    """Two Myrtle CNNs of width 4, one epoch on 512 real training images."""
    from experiments import train_zoo

    root = tmp_path_factory.mktemp("zoo")
    train_zoo.main(
        [
            "--arch",
            "myrtle",
            "--width",
            "4",
            "--seeds",
            "0-1",
            "--epochs",
            "1",
            "--train-size",
            "512",
            "--val-size",
            "200",
            "--test-size",
            "300",
            "--name",
            "myrtle4",
            "--out",
            str(root),
            "--no-progress",
            "--data-dir",
            str(cifar_dir),
        ]
    )
    return root / "myrtle4"


def test_stitch_experiment_end_to_end_and_resumes(tiny_zoo, tmp_path, cifar_dir):
    out = tmp_path / "stitch"
    argv = [
        "--zoo",
        str(tiny_zoo),
        "--out",
        str(out),
        "--methods",
        "identity",
        "full",
        "--layers",
        "block1",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--data-dir",
        str(cifar_dir),
    ]
    rows = experiment.main(argv)
    records = [json.loads(line) for line in open(out / "results.jsonl")]
    assert {r["method"] for r in records} == {"identity", "full"}
    assert all(r["pair"] == [0, 1] and r["layer"] == "block1" for r in records)
    for r in records:
        expected = (r["accuracy_a"] + r["accuracy_b"]) / 2 - r["test_accuracy"]
        assert r["penalty"] == pytest.approx(expected, abs=1e-12)
        assert r["chosen_epoch"] == max(
            range(len(r["val_accuracy"])), key=r["val_accuracy"].__getitem__
        )
    with open(out / "penalties.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) == 2
    assert (out / "figure1.png").stat().st_size > 0

    # A rerun finds every job done and adds nothing.
    experiment.main(argv)
    assert len(open(out / "results.jsonl").read().splitlines()) == 2

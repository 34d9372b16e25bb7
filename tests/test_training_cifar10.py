"""End to end on the real CIFAR-10 copy: a small Myrtle CNN learns.

Myrtle of width 8, trained by ``experiments/train_zoo.py`` with the ``"cpu"``
recipe for 256 steps (2 epochs of 8,192 training images in batches of 64),
reaches about 46% on the full 10,000-image test split (chance: 10%); the test
asks for 35%. On a quiet two-core CPU the run takes about a minute and a half of
CPU time (mostly compilation and the 22,000 evaluated images); on a loaded one,
several minutes, hence the ``slow`` mark.
"""

import json

import pytest

from experiments import train_zoo


@pytest.mark.slow
def test_small_myrtle_learns_cifar10(cifar_dir, tmp_path):
    argv = [
        "--arch", "myrtle", "--width", "8", "--seeds", "0", "--epochs", "2",
        "--batch-size", "64", "--train-size", "8192", "--val-size", "1000",
        "--data-dir", str(cifar_dir), "--out", str(tmp_path), "--no-progress",
    ]  # fmt: skip
    (record,) = train_zoo.main(argv)
    assert record["test_accuracy"] >= 0.35
    assert record["test_images"] == 10_000 and record["val_images"] == 1000
    assert record["selected_on"] == "val_accuracy"

    # The accuracy is on the full test split, selected on validation only.
    member = tmp_path / "myrtle_width8" / "seed_0"
    config = json.loads((member / "config.json").read_text())
    assert config["test_size"] is None and config["val_size"] == 1000
    evals = [
        json.loads(line)
        for line in (member / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "eval"
    ]
    assert [e["epoch"] for e in evals] == [1, 2]
    best = max(evals, key=lambda e: e["val_accuracy"])
    assert record["test_accuracy"] == best["test_accuracy"]

    # Rerunning the command finds the finished seed and trains nothing.
    assert train_zoo.main(argv) == [record]

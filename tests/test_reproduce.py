"""experiments/reproduce.py: every preset's plan parses, and the smoke preset writes
a complete report on the real CIFAR-10 copy."""

import csv
import json
import math

import matplotlib.image
import numpy as np
import pytest

from experiments import (
    dissection,
    reproduce,
    rotation_penalty,
    similarity,
    stitch,
    train_zoo,
)

PARSERS = {
    "experiments.train_zoo": lambda argv: train_zoo.build_parser().parse_args(argv),
    "experiments.stitch": stitch.parse_args,
    "experiments.similarity": similarity.parse_args,
    "experiments.rotation_penalty": rotation_penalty.parse_args,
    "experiments.dissection": dissection.parse_args,
}

# Per table, the columns that must hold finite numbers in every row.
TABLES = {
    "stitching": ("penalty_pp", "stitched_accuracy", "model_accuracy"),
    "similarity": ("mean",),
    "rotation_penalty": ("penalty", "acc_before", "acc_after"),
    "dissection": ("alpha", "interpretable@0.04", "mean_best_iou"),
}


@pytest.mark.parametrize("name", sorted(reproduce.PRESETS))
def test_every_step_of_every_preset_parses(name, tmp_path):
    steps = reproduce.plan(
        reproduce.PRESETS[name], tmp_path, tmp_path / "zoo", ["--data-dir", "d"]
    )
    modules = [module for _, module, _ in steps]
    assert modules[-4:] == [
        "experiments.stitch",
        "experiments.similarity",
        "experiments.rotation_penalty",
        "experiments.dissection",
    ]
    for _, module, argv in steps:
        args = PARSERS[module](argv)
        assert str(args.data_dir) == "d"


def _check_png(path):
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) >= 200, path
    # Not a blank canvas: a plotted figure has many distinct colours.
    colours = np.unique(image.reshape(-1, image.shape[2]).round(2), axis=0)
    assert len(colours) > 20, path


def _check_finite(rows, columns, table):
    assert rows, f"{table}: no rows"
    for row in rows:
        for column in columns:
            value = float(row[column])
            assert math.isfinite(value), (table, column, row)


@pytest.mark.slow
def test_smoke_preset_writes_every_figure_and_table(cifar_dir, tmp_path):
    out = tmp_path / "smoke"
    argv = ["--preset", "smoke", "--out", str(out), "--data-dir", str(cifar_dir)]
    report = reproduce.main(argv)

    meta = json.loads((out / "report.json").read_text())
    names = sorted(p.split("/")[-1] for p in meta["figures"])
    assert names == [
        "figure1_stitching.png",
        "figure2_similarity_resnet20.png",
        "figure3_dissection.png",
        "figure4_rotation_penalty.png",
        "figure5_similarity_myrtle.png",
    ]
    for path in meta["figures"]:
        _check_png(path)

    for table, path in meta["tables"].items():
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        _check_finite(rows, TABLES[table], table)

    text = report.read_text()
    for section in ("Stitching", "Similarity", "Rotation penalty", "dissection"):
        assert section in text
    assert "(no results)" not in text

    # A rerun finds every result and trains and measures nothing new.
    before = {p: p.stat().st_mtime for p in out.rglob("*.jsonl")}
    reproduce.main(argv)
    assert {p: p.stat().st_mtime for p in out.rglob("*.jsonl")} == before


def test_rotation_findings_count_layers_below_and_clearly_below():
    def row(layer, kind, penalty, ci):
        return {
            "activation": "relu",
            "layer": layer,
            "kind": kind,
            "penalty": str(penalty),
            "ci95": str(ci),
        }

    rows = [
        row("block0", "group", 0.01, 0.01),
        row("block0", "orthogonal", 0.05, 0.01),  # clearly below
        row("block1", "group", 0.02, 0.02),
        row("block1", "orthogonal", 0.03, 0.02),  # below, intervals overlap
        row("block2", "group", 0.04, 0.0),
        row("block2", "orthogonal", 0.01, 0.0),  # above
    ]
    (line,) = reproduce.rotation_findings(rows)
    assert "below the orthogonal one at 2 of 3 layers" in line
    assert "non-overlapping 95% intervals at 1;" in line
    assert "2.33 pp (group) vs 3.00 pp (orthogonal)" in line

"""End-to-end test of experiments/dissection.py on a tiny untrained model."""

import json
import math

import numpy as np
import pytest

from experiments import dissection
from symjax.dissection import synthetic_concepts, write_broden

ARGV = [
    "--untrained",
    "--models",
    "resnet20",
    "--width-multiplier",
    "0.25",
    "--concepts",
    "synthetic",
    "--num-images",
    "12",
    "--alphas",
    "0",
    "0.5",
    "1",
    "--num-rotations",
    "2",
    "--batch-size",
    "6",
]
METRICS = ("num_units", "mean_best_iou", "median_best_iou", "by_category")


def _rows(out):
    with open(out / "dissection.jsonl") as f:
        return [json.loads(line) for line in f]


def test_main_writes_finite_rows_and_alpha_zero_is_the_own_basis(tmp_path):
    out = tmp_path / "run"
    result = dissection.main([*ARGV, "--out", str(out)])
    for name in ("dissection.jsonl", "dissection.csv", "summary.csv", "config.json"):
        assert (out / name).stat().st_size > 0
    with open(out / "figure3.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    rows = _rows(out)
    # Two sites (block output and inner ReLU), each 2 rotations x 3 alphas + own.
    assert len(rows) == 2 * (2 * 3 + 1)
    assert {r["layer"] for r in rows} == {"stage2.block2", "stage2.block2.inner"}
    for r in rows:
        values = [v for k, v in r.items() if isinstance(v, float)]
        assert all(math.isfinite(v) for v in values)
        assert 0.0 <= r["mean_best_iou"] <= 1.0
        assert r["num_units"] == 16
    for layer in ("stage2.block2", "stage2.block2.inner"):
        mine = [r for r in rows if r["layer"] == layer]
        (own,) = [r for r in mine if r["rotation"] is None]
        zeros = [r for r in mine if r["alpha"] == 0.0 and r["rotation"] is not None]
        assert len(zeros) == 2
        fields = [k for k in own if k.startswith(("interpretable@", "unique@"))]
        assert len(fields) == 12
        for r in zeros:
            for k in (*fields, *METRICS):
                assert r[k] == own[k], k

    # The summary averages the rotations at each alpha.
    assert len(result["summary"]) == 2 * 3
    for s in result["summary"]:
        assert s["rotations"] == 2
        assert math.isfinite(s["mean_best_iou"]) and s["mean_best_iou_ci"] >= 0

    # A rerun finds every row done; other settings are refused.
    dissection.main([*ARGV, "--out", str(out)])
    assert len(_rows(out)) == len(rows)
    with pytest.raises(ValueError, match="other settings"):
        dissection.main([*ARGV, "--out", str(out), "--seed", "1"])


def test_broden_concepts_are_read_and_cut_to_num_images(tmp_path):
    source = synthetic_concepts(5, seed=2, size=16)
    folder = write_broden(source, tmp_path / "broden")
    data = dissection.load_concepts(f"broden:{folder}", 3, 0, None)
    assert len(data) == 3
    batch = next(data.batches(3))
    np.testing.assert_array_equal(batch.images, source.images[:3])
    assert batch.num_valid == 3

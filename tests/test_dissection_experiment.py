"""Tests of the rotation sweep behind Figure 3 (symjax/dissection/experiment.py)."""

import math

import numpy as np
import pytest
import scipy.stats

from symjax.dissection import dissect, synthetic_concepts
from symjax.dissection.colors import color_concepts
from symjax.dissection.experiment import (
    alpha_curve,
    concatenate_concepts,
    mean_interval,
    random_rotation,
    rotation_path,
    sweep_layer,
)
from symjax.rotations import fractional_rotation


def _table():
    # A synthetic colour table: the term is the brightest channel (0..2), or
    # grey (3) for dark pixels; enough for label bookkeeping tests.
    r, g, b = np.meshgrid(np.arange(32), np.arange(32), np.arange(32), indexing="ij")
    t = np.argmax(np.stack([r, g, b]), axis=0).astype(np.uint8)
    return np.where(r + g + b < 12, 3, t).astype(np.uint8)


@pytest.fixture(scope="module")
def concepts():
    return synthetic_concepts(12, seed=3, size=16, color_table=_table())


def _features(dataset, units=6, seed=0):
    # Unit u fires (plus noise) on the pixels of the u-th rarest label, at half
    # the label resolution; a unit's top 0.5% then sits inside a small concept,
    # so some units detect it (IoU far above 0.04) in the own basis.
    rng = np.random.default_rng(seed)
    labels = next(dataset.batches(len(dataset))).pixel_labels[:, :, ::2, ::2]
    counts = np.bincount(labels.ravel(), minlength=dataset.num_labels)
    counts[0] = 0
    rare = [k for k in np.argsort(counts) if counts[k] > 0][:units]
    hits = np.stack([(labels == k).any(axis=1) for k in rare], axis=-1)
    noise = 0.1 * rng.normal(size=hits.shape)
    return (hits + noise).astype(np.float32)


def test_random_rotation_is_a_reproducible_rotation():
    Q = random_rotation(5, 2, 7)
    np.testing.assert_allclose(Q.T @ Q, np.eye(7), atol=1e-6)
    assert np.linalg.det(Q) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(Q, random_rotation(5, 2, 7))
    assert np.max(np.abs(Q - random_rotation(5, 3, 7))) > 0.1


def test_rotation_path_ends_at_identity_and_Q():
    Q = random_rotation(0, 0, 5)
    path = rotation_path(Q, [0.0, 0.5, 1.0])
    assert path.dtype == np.float32
    np.testing.assert_array_equal(path[0], np.eye(5, dtype=np.float32))
    np.testing.assert_allclose(path[2], Q, atol=1e-5)
    # Halfway twice is the whole way.
    np.testing.assert_allclose(path[1] @ path[1], Q, atol=1e-5)


def test_sweep_rows_match_direct_dissection(concepts):
    feats = _features(concepts)
    alphas = [0.0, 0.5, 1.0]
    groups = list(sweep_layer(feats, concepts, alphas, [0, 1], seed=4, batch_size=5))
    assert [g[0]["rotation"] for g in groups] == [None, 0, 1]
    own = groups[0][0]
    direct = dissect(feats, concepts, batch_size=5)
    assert own["interpretable@0.04"] == direct.num_interpretable(0.04)
    assert own["mean_best_iou"] == pytest.approx(direct.mean_best_iou, abs=1e-12)
    assert own["interpretable@0.04"] > 0  # the features were built to detect

    for group in groups[1:]:
        r = group[0]["rotation"]
        Q = random_rotation(4, r, feats.shape[-1])
        for row in group:
            R = np.asarray(fractional_rotation(Q, row["alpha"]), np.float32)
            res = dissect(feats, concepts, rotation=R, batch_size=5)
            assert row["interpretable@0.1"] == res.num_interpretable(0.1)
            assert row["mean_best_iou"] == pytest.approx(res.mean_best_iou, abs=1e-6)
        # alpha = 0 is exactly the own basis.
        zero = {k: v for k, v in group[0].items() if k not in ("rotation",)}
        assert zero == {k: v for k, v in own.items() if k != "rotation"}


def test_sweep_skips_finished_rows(concepts):
    feats = _features(concepts)
    done = {(None, 0.0), (0, 0.0), (0, 1.0), (1, 0.0), (1, 1.0)}
    groups = list(
        sweep_layer(
            feats,
            concepts,
            [0.0, 1.0],
            [0, 1, 2],
            skip=lambda a, r: (r, a) in done,
            batch_size=6,
        )
    )
    assert [(row["rotation"], row["alpha"]) for g in groups for row in g] == [
        (2, 0.0),
        (2, 1.0),
    ]


def test_mean_interval_is_the_student_t_interval():
    mean, half = mean_interval([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(scipy.stats.t.ppf(0.975, 2) / math.sqrt(3), 1e-12)
    assert mean_interval([4.0]) == (4.0, 0.0)
    assert all(math.isnan(v) for v in mean_interval([]))


def test_alpha_curve_averages_rotations_and_ignores_own_basis():
    rows = [
        {"alpha": 0.0, "rotation": None, "m": 100.0},
        {"alpha": 0.0, "rotation": 0, "m": 4.0},
        {"alpha": 0.0, "rotation": 1, "m": 6.0},
        {"alpha": 1.0, "rotation": 0, "m": 1.0},
        {"alpha": 1.0, "rotation": 1, "m": 1.0},
    ]
    a, mean, half = alpha_curve(rows, "m")
    np.testing.assert_array_equal(a, [0.0, 1.0])
    np.testing.assert_allclose(mean, [5.0, 1.0], rtol=0, atol=1e-12)
    assert half[0] > 0 and half[1] == 0
    with pytest.raises(ValueError, match="metric"):
        alpha_curve(rows, "missing")


def test_concatenate_keeps_every_label_in_its_category():
    table = _table()
    rng = np.random.default_rng(0)
    colors = color_concepts(rng.integers(0, 256, (3, 16, 16, 3), np.uint8), table)
    synth = synthetic_concepts(4, seed=1, size=16, color_table=table)
    both = concatenate_concepts([colors, synth])
    assert len(both) == 7
    assert both.layer_categories == synth.layer_categories
    assert both.slot_categories == synth.slot_categories
    np.testing.assert_array_equal(both.images[:3], colors.images)
    # Colour images keep their colour layer and get no other label.
    np.testing.assert_array_equal(both.pixel_labels[:3, 0], colors.pixel_labels[:, 0])
    assert not both.pixel_labels[:3, 1:].any() and not both.image_labels[:3].any()
    np.testing.assert_array_equal(both.pixel_labels[3:], synth.pixel_labels)
    np.testing.assert_array_equal(both.image_labels[3:], synth.image_labels)


def test_concatenate_rejects_conflicting_numbers():
    table = _table()
    synth = synthetic_concepts(2, seed=1, size=16)  # no colours: texture is 1
    colors = color_concepts(np.zeros((1, 16, 16, 3), np.uint8), table)
    with pytest.raises(ValueError, match="renumber"):
        concatenate_concepts([colors, synth])

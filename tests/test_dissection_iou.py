"""Tests for symjax.dissection.iou: thresholds, IoU, detectors and invariances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symjax import rotations
from symjax.dissection import (
    ArrayConcepts,
    Concept,
    dissect,
    dissect_rotations,
    synthetic_concepts,
)
from symjax.dissection.iou import quantile_plan, quantile_threshold, top_k_update

N = 48  # images of the generated set used below


@pytest.fixture(scope="module")
def concepts():
    return synthetic_concepts(N, seed=3)


def _mask(ds, name):
    """``[n, h, w]`` bool mask of the concept called ``name``."""
    number = next(c.number for c in ds.concepts if c.name == name)
    return (
        np.any(ds.pixel_labels == number, axis=1)
        | np.any(ds.image_labels == number, axis=1)[:, None, None]
    )


def _pool(m, f=4):
    n, h, w = m.shape
    return m.reshape(n, h // f, f, w // f, f).mean(axis=(2, 4))


@pytest.fixture(scope="module")
def layer(concepts):
    """``[N, 8, 8, 6]`` features: four planted detectors and two noise units."""
    rng = np.random.default_rng(0)
    planted = [
        _pool(_mask(concepts, n).astype(float))
        for n in ("disk", "striped-vertical", "cross-outline", "dotted")
    ]
    noise = [rng.normal(size=(N, 8, 8)) for _ in range(2)]
    f = np.stack(planted + noise, axis=-1)
    return f + 1e-3 * rng.normal(size=f.shape)


def _reference(features, ds, quantile):
    """Dissection by direct loops, for features at the label resolution."""
    n, h, w, U = features.shape
    T = np.quantile(features.reshape(-1, U), 1 - quantile, axis=0)
    cat_of = ds.label_category()
    numbers = [c.number for c in ds.concepts]
    iou = np.zeros((U, ds.num_labels))
    for u in range(U):
        fires = features[..., u] > T[u]
        for k in numbers:
            inter = union = 0
            for i in range(n):
                labels = set(ds.pixel_labels[i].ravel()) | set(ds.image_labels[i])
                if not any(cat_of[j] == cat_of[k] for j in labels if j):
                    continue  # image carries no label of k's category
                L = np.any(ds.pixel_labels[i] == k, axis=0) | (k in ds.image_labels[i])
                inter += np.sum(fires[i] & L)
                union += np.sum(fires[i] | L)
            iou[u, k] = inter / union if union else 0.0
    return T, iou


def test_matches_a_direct_reference(concepts):
    ds = concepts.subset(range(12))
    rng = np.random.default_rng(1)
    f = rng.normal(size=(12, 32, 32, 3))
    f[..., 1] += 3 * _mask(ds, "smooth")  # give one unit something to find
    T, iou = _reference(f, ds, 0.05)
    r = dissect(f, ds, quantile=0.05, batch_size=5)
    np.testing.assert_allclose(r.thresholds, T, rtol=1e-12)
    np.testing.assert_allclose(r.iou, iou, atol=1e-12)
    assert r.best_concept(1)[0] == "smooth"


def test_quantile_at_masks(concepts, layer):
    r = dissect(layer, concepts, quantile=0.02, quantile_at="masks", batch_size=16)
    up = jax.image.resize(layer, (N, 32, 32, 6), "bilinear")
    want = np.quantile(np.asarray(up).reshape(-1, 6), 0.98, axis=0)
    np.testing.assert_allclose(r.thresholds, want, rtol=1e-12)
    base = dissect(layer, concepts, quantile=0.02, batch_size=16)
    assert not np.array_equal(r.thresholds, base.thresholds)
    assert [r.best_concept(u)[0] for u in range(4)] == [
        base.best_concept(u)[0] for u in range(4)
    ]


def test_threshold_is_the_exact_quantile():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(37, 5, 3, 4))
    for q in (0.005, 0.05, 0.3):
        k, _ = quantile_plan(x[..., 0].size, q)
        top = None
        for start in range(0, 37, 8):
            chunk = x[start : start + 8]
            valid = np.ones(len(chunk), bool)
            top = top_k_update(top, jnp.asarray(chunk), valid, None, k=k)
        got = quantile_threshold(top, x[..., 0].size, q)
        want = np.quantile(x.reshape(-1, 4), 1 - q, axis=0)
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_planted_unit_exact_iou_one():
    # A concept on 0.2% of the pixels and a unit that is 1 there, 0 elsewhere:
    # T = 0 and the strict test fires exactly on the concept, so IoU = 1.
    n, s = 50, 16
    labels = np.zeros((n, 1, s, s), np.int32)
    labels[:, 0, 8:, :] = 1  # "ground" covers half of every image
    for i in range(0, n, 5):
        labels[i, 0, 2:4, 2:4] = 2
    ds = ArrayConcepts(
        np.zeros((n, s, s, 3), np.uint8),
        labels,
        np.zeros((n, 0), np.int32),
        [Concept(1, "ground", "thing"), Concept(2, "spot", "thing")],
        ["thing"],
        [],
        ["thing"],
        [],
    )
    spot = (labels[:, 0] == 2).astype(float)
    f = np.stack([spot, np.random.default_rng(0).normal(size=(n, s, s))], axis=-1)
    r = dissect(f, ds, batch_size=16)
    assert r.thresholds[0] == 0.0
    assert r.best_concept(0)[:2] == ("spot", "thing")
    np.testing.assert_allclose(r.best_iou[0], 1.0, atol=1e-12)
    assert r.interpretable()[0] and not r.interpretable()[1]
    assert r.num_interpretable() == 1 and r.unique_concepts() == ("spot",)


def test_planted_unit_on_generated_set_has_iou_one(concepts):
    # triangle-outline covers 0.43% of the pixels, under the default q = 0.005.
    target = _mask(concepts, "triangle-outline")
    assert 0 < target.mean() < 0.005
    noise = np.random.default_rng(5).normal(size=target.shape)
    f = np.stack([target.astype(float), noise], axis=-1)
    r = dissect(f, concepts, batch_size=16)
    assert r.best_concept(0) == ("triangle-outline", "outline", pytest.approx(1.0))
    assert r.interpretable().tolist() == [True, False]


def test_planted_units_are_found_and_noise_is_not(concepts, layer):
    # Pooled to 8 x 8 and upsampled back, the planted maps are blurred.
    r = dissect(layer, concepts, quantile=0.02, batch_size=16)
    names = [r.best_concept(u)[0] for u in range(4)]
    assert names == ["disk", "striped-vertical", "cross-outline", "dotted"]
    assert np.all(r.best_iou[:4] > 0.1)
    assert np.all(r.best_iou[4:] < 0.04)
    assert r.interpretable().tolist() == [True] * 4 + [False] * 2
    assert r.num_unique_concepts() == 4
    s = r.summary()
    assert s["interpretable"]["0.04"] == 4 and s["num_units"] == 6
    assert s["by_category"]["0.04"] == {
        "texture": 2,
        "shape": 1,
        "outline": 1,
        "scene": 0,
    }
    np.testing.assert_allclose(s["mean_best_iou"], r.best_iou.mean(), rtol=1e-12)
    assert r.units()[2]["concept"] == "cross-outline"


def _assert_same(a, b):
    np.testing.assert_array_equal(a.thresholds, b.thresholds)
    np.testing.assert_array_equal(a.intersection, b.intersection)
    np.testing.assert_array_equal(a.activation, b.activation)
    np.testing.assert_array_equal(a.label_count, b.label_count)


def _counts(r):
    return [
        (r.num_interpretable(t), r.num_unique_concepts(t))
        for t in (0.04, 0.1, 0.2, 0.3)
    ]


def test_alpha_zero_batch_size_and_callable_leave_everything_unchanged(concepts, layer):
    base = dissect(layer, concepts, quantile=0.02, batch_size=16)
    Q = rotations.haar_special_orthogonal(jax.random.key(0), 6)
    _assert_same(
        base,
        dissect(
            layer,
            concepts,
            rotations.fractional_rotation(Q, 0.0),
            quantile=0.02,
            batch_size=16,
        ),
    )
    _assert_same(base, dissect(layer, concepts, quantile=0.02, batch_size=7))
    lookup = {im.tobytes(): k for k, im in enumerate(concepts.images)}

    def features(images):
        return jnp.asarray(
            np.stack([layer[lookup.get(im.tobytes(), 0)] for im in images])
        )

    _assert_same(base, dissect(features, concepts, quantile=0.02, batch_size=16))


def test_permutation_scaling_offset_invariance(concepts, layer):
    base = dissect(layer, concepts, quantile=0.02, batch_size=16)
    rng = np.random.default_rng(4)
    perm = rng.permutation(6)
    scale = rng.uniform(0.3, 3.0, 6)
    offset = rng.normal(size=6)

    r = dissect(layer[..., perm], concepts, quantile=0.02, batch_size=16)
    np.testing.assert_array_equal(r.intersection, base.intersection[perm])
    np.testing.assert_array_equal(r.best_label, base.best_label[perm])
    assert _counts(r) == _counts(base)

    for g in (layer * scale, layer + offset, layer * scale + offset):
        r = dissect(g, concepts, quantile=0.02, batch_size=16)
        np.testing.assert_array_equal(r.intersection, base.intersection)
        np.testing.assert_array_equal(r.activation, base.activation)
        assert _counts(r) == _counts(base)


def test_negation_changes_the_counts(concepts, layer):
    base = dissect(layer, concepts, quantile=0.02, batch_size=16)
    neg = dissect(-layer, concepts, quantile=0.02, batch_size=16)
    assert neg.num_interpretable(0.1) < base.num_interpretable(0.1)
    assert neg.mean_best_iou < base.mean_best_iou


def test_rotation_is_applied_before_thresholds(concepts, layer):
    Q = rotations.haar_special_orthogonal(jax.random.key(1), 6)
    R = rotations.fractional_rotation(Q, 0.4)
    direct = dissect(
        np.asarray(rotations.rotate_features(layer, R)),
        concepts,
        quantile=0.02,
        batch_size=16,
    )
    both = dissect_rotations(layer, concepts, [None, R], quantile=0.02, batch_size=16)
    np.testing.assert_allclose(both[1].thresholds, direct.thresholds, rtol=1e-12)
    np.testing.assert_array_equal(both[1].intersection, direct.intersection)
    _assert_same(both[0], dissect(layer, concepts, quantile=0.02, batch_size=16))
    # A rotation mixes the planted detectors, so the best IoUs drop.
    full = dissect(layer, concepts, Q, quantile=0.02, batch_size=16)
    assert full.mean_best_iou < both[0].mean_best_iou


def test_dense_features_and_zero_units(concepts):
    # [N, U] features are constant maps; a unit that is zero at almost every
    # position (threshold 0) lights only where it is positive.
    f = np.zeros((N, 2))
    f[:3, 0] = 1.0
    f[:, 1] = _mask(concepts, "empty-s")[:, 0, 0]
    r = dissect(f, concepts, quantile=0.2, batch_size=16)
    assert r.thresholds[0] == 0.0
    assert r.activation[0].max() == 3 * 32 * 32
    assert r.best_concept(1)[0] == "empty-s"
    np.testing.assert_allclose(r.best_iou[1], 1.0, atol=1e-12)


def test_bad_inputs(concepts, layer):
    with pytest.raises(ValueError, match="rows"):
        dissect(layer[:5], concepts)
    with pytest.raises(ValueError, match="rotation"):
        dissect(layer, concepts, np.eye(5))
    with pytest.raises(ValueError, match="quantile"):
        dissect(layer, concepts, quantile=0.0)
    with pytest.raises(ValueError, match="quantile_at"):
        dissect(layer, concepts, quantile_at="pixels")
    with pytest.raises(ValueError, match="batch_size"):
        dissect(layer, concepts, batch_size=10**6)
    for bad in (np.nan, np.inf):
        broken = np.array(layer, copy=True)
        broken[3, 0, 0, 0] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            dissect(broken, concepts)

"""Procrustes measures: exactness at identity, invariances, brute force, bounds."""

import itertools

import jax
import numpy as np
import pytest
import scipy.optimize

from symjax.groups import activation_group
from symjax.similarity import (
    Procrustes,
    grelu_procrustes_distance,
    grelu_procrustes_similarity,
    orthogonal_procrustes_distance,
    orthogonal_procrustes_similarity,
)

N = 30
DENSE = (5,)
CONV = (2, 2, 5)
FLOOR = 1 - 1 / np.sqrt(2)  # the orthogonal similarity's lower bound


def relu_features(seed, shape=DENSE, n=N):
    return np.maximum(np.random.default_rng(seed).standard_normal((n, *shape)), 0)


def grelu_element(seed, c):
    g = activation_group("relu").sample(jax.random.key(seed), c, dtype=np.float64)
    scale = 10.0 ** np.random.default_rng(seed).uniform(-3, 3, c)
    return type(g)(g.perm, scale)


def _orthogonal(seed, d):
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def _normalize_columns(A):
    norms = np.linalg.norm(A, axis=0)
    return A / np.where(norms > 0, norms, 1)


def test_identical_inputs_give_exactly_one():
    """The paper code returns NaN for some of these (sqrt of a rounding error)."""
    cases = [(np.float64, DENSE), (np.float32, CONV), (np.float32, (64,))]
    for dtype, shape in cases:
        for seed in range(3):
            X = relu_features(seed, shape).astype(dtype)
            assert grelu_procrustes_similarity(X, X) == 1.0
            assert grelu_procrustes_distance(X, X) == 0.0
            for convention in ("standard", "authors"):
                s = orthogonal_procrustes_similarity(X, X, convention=convention)
                assert s == 1.0
                assert orthogonal_procrustes_distance(X, X.copy()) == 0.0


@pytest.mark.parametrize("shape", [DENSE, CONV], ids=["dense", "conv"])
def test_grelu_invariance(shape):
    X = relu_features(0, shape)
    Y = np.roll(X, 1, axis=-1) + 0.3 * relu_features(1, shape)
    A, B = grelu_element(2, 5), grelu_element(3, 5)
    AX, BY = np.asarray(A.apply(X)), np.asarray(B.apply(Y))
    for center in (False, True):
        base = grelu_procrustes_similarity(X, Y, center=center)
        assert base < 0.99
        np.testing.assert_allclose(
            grelu_procrustes_similarity(AX, BY, center=center), base, atol=1e-12
        )
        assert grelu_procrustes_similarity(X, AX, center=center) == pytest.approx(
            1.0, abs=1e-12
        )


def test_shifts_break_definition_5_2_and_centring_restores_invariance():
    X = relu_features(4)
    Y = relu_features(5)
    v = 3.0 * np.random.default_rng(6).standard_normal(5)
    assert grelu_procrustes_similarity(X, X + v) < 0.9
    assert grelu_procrustes_similarity(X, X + v, center=True) == pytest.approx(
        1.0, abs=1e-12
    )
    np.testing.assert_allclose(
        grelu_procrustes_similarity(X + v, Y - v, center=True),
        grelu_procrustes_similarity(X, Y, center=True),
        atol=1e-12,
    )
    # The orthogonal measure centres under the standard convention only.
    assert orthogonal_procrustes_similarity(
        X, X + v, convention="standard"
    ) == pytest.approx(1.0, abs=1e-7)
    assert orthogonal_procrustes_similarity(X, X + v, convention="authors") < 0.99


def test_generic_orthogonal_map_lowers_grelu_procrustes_only():
    X = relu_features(7, (8,))
    XQ = X @ _orthogonal(8, 8)
    assert grelu_procrustes_similarity(X, XQ) < 0.9
    assert grelu_procrustes_similarity(X, XQ, center=True) < 0.9
    for convention in ("standard", "authors"):
        s = orthogonal_procrustes_similarity(X, 4.2 * XQ, convention=convention)
        assert s == pytest.approx(1.0, abs=1e-7)


def test_grelu_distance_equals_brute_force_over_permutations():
    rng = np.random.default_rng(9)
    for _ in range(4):
        X = rng.standard_normal((N, 5))
        Y = X[:, rng.permutation(5)] + 0.8 * rng.standard_normal((N, 5))
        A, B = _normalize_columns(X), _normalize_columns(Y)
        best = min(
            np.linalg.norm(A - B[:, list(p)]) for p in itertools.permutations(range(5))
        )
        np.testing.assert_allclose(grelu_procrustes_distance(X, Y), best, rtol=1e-12)
        np.testing.assert_allclose(
            grelu_procrustes_similarity(X, Y), 1 - best / (2 * np.sqrt(5)), rtol=1e-12
        )


def test_orthogonal_distance_equals_nuclear_norm_formula():
    rng = np.random.default_rng(10)
    X = rng.standard_normal((N, 2, 2, 5))
    Y = rng.standard_normal((N, 2, 2, 3))
    A = X.reshape(-1, 5) - X.reshape(-1, 5).mean(0)
    B = Y.reshape(-1, 3) - Y.reshape(-1, 3).mean(0)
    A, B = A / np.linalg.norm(A), B / np.linalg.norm(B)
    nuc = np.linalg.norm(A.T @ B, "nuc")
    np.testing.assert_allclose(
        orthogonal_procrustes_distance(X, Y), np.sqrt(2 - 2 * nuc), rtol=1e-10
    )
    # and the paper code's expression, without centring
    A, B = X.reshape(-1, 5), Y.reshape(-1, 3)
    A, B = A / np.linalg.norm(A), B / np.linalg.norm(B)
    nuc = np.linalg.norm(A.T @ B, "nuc")
    np.testing.assert_allclose(
        orthogonal_procrustes_similarity(X, Y, convention="authors"),
        1 - np.sqrt(2 - 2 * nuc) / 2,
        rtol=1e-10,
    )


def test_authors_grelu_procrustes_matches_their_definition():
    X = relu_features(11, CONV)
    Y = relu_features(12, CONV)
    A = _normalize_columns(X.reshape(-1, 5))
    B = _normalize_columns(Y.reshape(-1, 5))
    C = A.T @ B
    i, j = scipy.optimize.linear_sum_assignment(C, maximize=True)
    theirs = 1 - np.sqrt((A**2).sum() + (B**2).sum() - 2 * C[i, j].sum()) / np.sqrt(
        4 * 5
    )
    np.testing.assert_allclose(Procrustes("grelu", "authors")(X, Y), theirs, rtol=1e-10)


def _adversarial(seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, 5))
    dead = X.copy()
    dead[:, [0, 3]] = 0.0
    rank1 = np.outer(rng.standard_normal(N), rng.standard_normal(5))
    return [
        X,
        -X,
        np.abs(X),
        dead,
        rank1,
        1e150 * X,
        1e-150 * X,
        np.maximum(X - 2, 0) + 1e-9,
        X[:, ::-1].copy(),
    ]


def test_bounds_on_random_and_adversarial_inputs():
    inputs = _adversarial(13) + [relu_features(14)]
    for X in inputs:
        for Y in inputs:
            # The distances themselves, before compare() clips: unit-norm columns
            # give delta <= 2 sqrt(d); unit-norm matrices give delta_O <= sqrt(2).
            for center in (False, True):
                delta, d = Procrustes("grelu", center=center).distance_and_width(
                    *(Procrustes("grelu", center=center).prepare(Z) for Z in (X, Y))
                )
                assert 0.0 <= delta <= 2.0 * np.sqrt(d) + 1e-12
                s = grelu_procrustes_similarity(X, Y, center=center)
                assert s == pytest.approx(1.0 - delta / (2.0 * np.sqrt(d)), abs=1e-12)
            for convention in ("standard", "authors"):
                m = Procrustes("orthogonal", convention)
                delta = m.distance(m.prepare(X), m.prepare(Y))
                assert 0.0 <= delta <= np.sqrt(2.0) + 1e-12
                s = orthogonal_procrustes_similarity(X, Y, convention=convention)
                assert FLOOR - 1e-12 <= s <= 1.0
    # The lower extreme is reached: every column of Y opposite to every one of X.
    X = np.tile(np.random.default_rng(22).standard_normal((N, 1)), (1, 5))
    assert grelu_procrustes_similarity(X, -X) == pytest.approx(0.0, abs=1e-12)


def test_different_widths_pad_with_dead_units():
    X = relu_features(15)
    Z = relu_features(16, (3,))
    padded = np.concatenate([X, np.zeros((N, 3))], axis=1)
    assert grelu_procrustes_similarity(X, padded) == 1.0
    # k extra live units matched with dead ones: delta^2 = k, d = 5 + k.
    s = grelu_procrustes_similarity(X, np.concatenate([X, Z], axis=1))
    np.testing.assert_allclose(s, 1 - np.sqrt(3) / (2 * np.sqrt(8)), rtol=1e-12)
    for convention in ("standard", "authors"):
        assert orthogonal_procrustes_similarity(
            X, padded, convention=convention
        ) == pytest.approx(1.0, abs=1e-7)


def test_larger_map_is_average_pooled_to_the_smaller():
    X = relu_features(17, (4, 2, 5))
    pooled = X.reshape(N, 2, 2, 1, 2, 5).mean(axis=(2, 4))
    m = Procrustes("grelu")
    assert m(X, pooled) == 1.0
    assert m(pooled, X) == 1.0
    # dense vs conv: global pooling (numpy's mean rounds differently from XLA's)
    assert m(X.mean(axis=(1, 2)), X) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="not nested"):
        m(X, relu_features(18, (3, 2, 5)))


def test_dead_units_give_no_nan_and_all_dead_raises():
    X = relu_features(19)
    dead = X.copy()
    dead[:, 2] = 0
    assert np.isfinite(grelu_procrustes_similarity(dead, X))
    assert np.isfinite(orthogonal_procrustes_similarity(dead, X))
    with pytest.raises(ValueError, match="no live unit"):
        grelu_procrustes_similarity(np.zeros_like(X), X)
    with pytest.raises(ValueError, match="no live unit"):
        orthogonal_procrustes_similarity(X, np.full_like(X, 2.0))


def test_bad_inputs_raise_and_inputs_are_not_modified():
    X = relu_features(20).astype(np.float32)
    Y = relu_features(21).astype(np.float32)
    X0, Y0 = X.copy(), Y.copy()
    for group in ("grelu", "orthogonal"):
        for convention in ("standard", "authors"):
            Procrustes(group, convention)(X, Y)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(Y, Y0)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        grelu_procrustes_similarity(bad, Y)
    with pytest.raises(ValueError, match="same inputs"):
        orthogonal_procrustes_similarity(X, Y[:-1])
    with pytest.raises(ValueError, match="group"):
        Procrustes("signed")


def test_orthogonal_distance_is_accurate_on_both_sides_of_the_direct_threshold():
    """Near alignment delta is evaluated as |A - BQ|, elsewhere from |A^T B|_*."""
    rng = np.random.default_rng(23)
    X = rng.standard_normal((N, 5))
    noise = rng.standard_normal((N, 5))
    for t in (1e-4, 0.05, 0.2, 0.5, 2.0):
        Y = X + t * noise
        A, B = X - X.mean(0), Y - Y.mean(0)
        A, B = A / np.linalg.norm(A), B / np.linalg.norm(B)
        U, _, Vt = np.linalg.svd(B.T @ A)
        expect = np.linalg.norm(A - B @ U @ Vt)
        np.testing.assert_allclose(
            orthogonal_procrustes_distance(X, Y), expect, rtol=1e-9, atol=1e-14
        )

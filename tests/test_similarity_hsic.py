"""HSIC estimators: the unbiased one against its defining U-statistic."""

import itertools
import math

import numpy as np
import pytest

from symjax.similarity import hsic_biased, hsic_unbiased, linear_gram, rbf_gram
from symjax.similarity.hsic import u_center


def brute_force_hsic1(K, L):
    """The U-statistic of the population HSIC, summed over distinct index tuples."""
    n = K.shape[0]
    pairs = sum(K[i, j] * L[i, j] for i, j in itertools.permutations(range(n), 2))
    triples = sum(K[i, j] * L[i, q] for i, j, q in itertools.permutations(range(n), 3))
    quads = sum(K[i, j] * L[q, r] for i, j, q, r in itertools.permutations(range(n), 4))
    return (
        pairs / math.perm(n, 2)
        + quads / math.perm(n, 4)
        - 2 * triples / math.perm(n, 3)
    )


def song_hsic1(K, L):
    """The three-term closed form of Song et al. (2012)."""
    n = K.shape[0]
    K = K - np.diag(np.diag(K))
    L = L - np.diag(np.diag(L))
    one = np.ones(n)
    return (
        np.trace(K @ L)
        + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * (one @ K @ L @ one)
    ) / (n * (n - 3))


def _grams(seed, n=7):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, 3)), rng.standard_normal((n, 2))
    Y[:, 0] += X[:, 0]
    M = np.maximum(rng.standard_normal((n, 4)), 0)
    max_k = (M[:, None, :] * M[None, :, :]).max(-1)  # not PSD in general
    return np.asarray(linear_gram(X)), np.asarray(rbf_gram(Y)), max_k


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n", [4, 7])
def test_unbiased_hsic_equals_u_statistic(seed, n):
    K, L, M = _grams(seed, n)
    for A, B in [(K, L), (K, M), (M, M), (L, K)]:
        expect = brute_force_hsic1(A, B)
        np.testing.assert_allclose(hsic_unbiased(A, B), expect, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(song_hsic1(A, B), expect, rtol=1e-10, atol=1e-13)


def test_unbiased_hsic_ignores_the_diagonal_and_additive_terms():
    """U-centring removes a_i + a_j + c off the diagonal and the whole diagonal."""
    K, L, _ = _grams(3, 9)
    rng = np.random.default_rng(0)
    a = rng.standard_normal(9)
    K2 = K + a[:, None] + a[None, :] + 2.5 + np.diag(rng.standard_normal(9))
    np.testing.assert_allclose(hsic_unbiased(K2, L), hsic_unbiased(K, L), rtol=1e-10)


def test_biased_hsic_is_the_trace_formula():
    K, L, M = _grams(4, 9)
    n = 9
    H = np.eye(n) - np.ones((n, n)) / n
    for A, B in [(K, L), (M, L)]:
        expect = np.trace(A @ H @ B @ H) / (n - 1) ** 2
        np.testing.assert_allclose(hsic_biased(A, B), expect, rtol=1e-12)


def test_self_hsic_is_nonnegative_even_for_indefinite_grams():
    """Self-HSIC is a sum of squares of U(K); Cauchy-Schwarz bounds the cross term."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        S = rng.standard_normal((10, 10))
        S = S + S.T  # symmetric, indefinite
        T = rng.standard_normal((10, 10))
        T = T + T.T
        assert np.linalg.eigvalsh(S)[0] < 0
        kk, tt, kt = hsic_unbiased(S, S), hsic_unbiased(T, T), hsic_unbiased(S, T)
        assert kk >= 0 and tt >= 0
        assert abs(kt) <= math.sqrt(kk * tt) * (1 + 1e-12)
        assert hsic_biased(S, S) >= 0


def test_unbiased_hsic_of_unrelated_features_can_be_negative_and_is_returned():
    values = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        K = np.asarray(linear_gram(rng.standard_normal((30, 5))))
        L = np.asarray(linear_gram(rng.standard_normal((30, 5))))
        values.append(hsic_unbiased(K, L))
    assert all(np.isfinite(values))
    assert min(values) < 0 < max(values)


def test_u_center_rows_sum_to_zero():
    K, _, _ = _grams(6, 8)
    U = np.asarray(u_center(K))
    np.testing.assert_allclose(U.sum(axis=1), 0.0, atol=1e-12)
    np.testing.assert_array_equal(np.diag(U), 0.0)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_unbiased_hsic_needs_four_samples(n):
    K = np.eye(n)
    with pytest.raises(ValueError, match="at least 4 samples"):
        hsic_unbiased(K, K)


def test_hsic_rejects_bad_grams():
    K = np.eye(5)
    with pytest.raises(ValueError, match="NaN or infinite"):
        hsic_unbiased(K, np.full((5, 5), np.nan))
    with pytest.raises(ValueError, match="same samples"):
        hsic_biased(K, np.eye(6))
    with pytest.raises(ValueError, match="square"):
        hsic_biased(np.ones((5, 4)), np.ones((5, 4)))

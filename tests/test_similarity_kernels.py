"""Gram matrices: tiled and untiled agree; the max kernel is not PSD (Lemma 5.5)."""

import jax.numpy as jnp
import numpy as np
import pytest

from symjax.similarity import linear_gram, max_gram, rbf_gram
from symjax.similarity.features import center, normalize
from symjax.similarity.kernels import auto_block_size


def _conv(seed, n=37, h=3, w=2, c=5):
    return np.random.default_rng(seed).standard_normal((n, h, w, c))


def naive_max_gram(x):
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    return np.einsum("ipc,jpc->ijc", x, x).max(-1)


@pytest.mark.parametrize("block", [8, 16, 37, 100])
def test_tiled_and_untiled_grams_agree(block):
    x = _conv(0)
    flat = x.reshape(37, -1)
    np.testing.assert_allclose(
        linear_gram(x, block_size=block), flat @ flat.T, rtol=1e-12
    )
    np.testing.assert_allclose(
        max_gram(x, block_size=block), naive_max_gram(x), rtol=1e-12
    )
    np.testing.assert_allclose(
        rbf_gram(x, block_size=block), rbf_gram(x, block_size=37), rtol=1e-12
    )
    dense = x[:, 0, 0, :]
    np.testing.assert_allclose(
        max_gram(dense, block_size=block),
        (dense[:, None] * dense[None]).max(-1),
        rtol=1e-12,
    )


def test_grams_are_exactly_symmetric():
    x = _conv(1, n=29)
    for K in (linear_gram(x, block_size=8), max_gram(x, block_size=8), rbf_gram(x)):
        K = np.asarray(K)
        np.testing.assert_array_equal(K, K.T)


def test_rbf_gram_matches_definition():
    x = _conv(2, n=11).reshape(11, -1)
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    med = np.median(d2[np.triu_indices(11, 1)])
    expect = np.exp(-d2 / (2 * 0.5**2 * med))
    np.testing.assert_allclose(
        rbf_gram(x, bandwidth=0.5), expect, rtol=1e-10, atol=1e-14
    )


def test_rbf_gram_rejects_zero_median_distance():
    x = np.ones((6, 3))
    with pytest.raises(ValueError, match="median pairwise distance"):
        rbf_gram(x)


def test_auto_block_size_divides_evenly_and_respects_budget():
    for n in (7, 500, 1000, 2000):
        for c in (None, 1, 64, 512):
            b = auto_block_size(n, c)
            assert 1 <= b <= n
            assert b == n or b % 8 == 0
            assert -(-n // b) * b - n < max(8, b)  # little padding


# Lemma 5.5 of the paper claims that k(x, y) = max(x * y) is positive semi-definite.


def test_max_kernel_counterexample_on_nonnegative_points():
    pts = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    K = np.asarray(max_gram(pts))
    np.testing.assert_array_equal(K, [[1, 0, 1], [0, 1, 1], [1, 1, 1]])
    np.testing.assert_allclose(np.linalg.det(K), -1.0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.eigvalsh(K)[0], 1 - np.sqrt(2), atol=1e-12)


def test_max_kernel_counterexample_family():
    """{e1, e2, t(1, 1)} has determinant -t^2 for every t > 0."""
    for t in (1e-3, 0.5, 7.0):
        pts = np.array([[1.0, 0.0], [0.0, 1.0], [t, t]])
        np.testing.assert_allclose(np.linalg.det(max_gram(pts)), -(t**2), rtol=1e-9)


@pytest.mark.parametrize("kind", ["gaussian", "relu", "relu_centred_normalised"])
def test_random_search_finds_indefinite_max_grams(kind):
    rng = np.random.default_rng(0)
    found = 0
    for _ in range(20):
        x = rng.standard_normal((20, 8))
        if kind != "gaussian":
            x = np.maximum(x, 0)
        if kind == "relu_centred_normalised":
            x = np.asarray(
                normalize(center(jnp.asarray(x)[:, None], "columns"), "columns")
            )
            x = x[:, 0]
        eig = np.linalg.eigvalsh(np.asarray(max_gram(x)))
        found += eig[0] < -1e-3 * eig[-1]
    # Every one of these 20-point sets is indefinite (observed: 20/20 in each family).
    assert found >= 18


def test_linear_and_rbf_grams_are_psd():
    x = _conv(3, n=25).reshape(25, -1)
    for K in (linear_gram(x), rbf_gram(x)):
        eig = np.linalg.eigvalsh(np.asarray(K))
        assert eig[0] > -1e-10 * eig[-1]

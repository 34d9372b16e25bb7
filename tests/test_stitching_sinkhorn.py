"""The Birkhoff relaxation: Sinkhorn projection, Hungarian rounding, diagnostics."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symjax.stitching import sinkhorn

# One compiled solver for every test below (float64, so that tight tolerances are
# reachable); epsilon and the potentials are traced.
_project = jax.jit(
    lambda L, eps, potentials: sinkhorn.doubly_stochastic(
        L, eps, potentials, max_iterations=3000, threshold=1e-6
    )
)


def project(L, eps, potentials=None):
    if potentials is None:
        potentials = (jnp.zeros(L.shape[:1], L.dtype),) * 2
    return _project(L, eps, potentials)


def _logits(n=6, seed=0, dtype=jnp.float64):
    return jax.random.normal(jax.random.key(seed), (n, n), dtype)


@pytest.mark.parametrize("epsilon", [1.0, 0.1])
def test_projection_is_doubly_stochastic(epsilon):
    out = project(_logits(), epsilon)
    S = np.asarray(out.matrix)
    assert bool(out.converged)
    assert (S >= 0).all()
    # OTT's tolerance (1e-6) bounds the L1 error of one marginal of the plan
    # T = S / n, of mass 1; the other marginal is exact after the last update.
    np.testing.assert_allclose(S.sum(0), 1.0, atol=6e-6)
    np.testing.assert_allclose(S.sum(1), 1.0, atol=6e-6)


def test_small_epsilon_tends_to_the_best_permutation_without_nans():
    L = _logits(6, seed=3)
    Ln = np.asarray(L)
    best = max(itertools.permutations(range(6)), key=lambda p: Ln[range(6), p].sum())
    S = project(L, 1e-3).matrix
    assert bool(jnp.isfinite(S).all())
    perm = sinkhorn.round_to_permutation(S)
    assert tuple(np.asarray(perm)) == best
    diag = sinkhorn.relaxation_diagnostics(S, perm)
    assert float(diag["distance_to_permutation"]) < 0.05
    assert float(diag["mass_on_permutation"]) > 0.95


def test_gradients_are_finite_at_small_epsilon_and_match_differences():
    L, W = _logits(6, 0), _logits(6, 1)
    zeros = (jnp.zeros(6), jnp.zeros(6))

    def loss(L, eps):
        return jnp.sum(_project(L, eps, zeros).matrix * W)

    # OTT's backward pass broadcasts implicitly (see doubly_stochastic).
    with jax.numpy_rank_promotion("allow"):
        grad = jax.jit(jax.grad(loss))
        assert bool(jnp.isfinite(grad(L, 1e-3)).all())
        g = grad(L, 0.5)

    # At a moderate epsilon the unrolled gradient agrees with central differences.
    E = jnp.zeros_like(L).at[1, 2].set(1.0)
    h = 1e-5
    fd = (loss(L + h * E, 0.5) - loss(L - h * E, 0.5)) / (2 * h)
    np.testing.assert_allclose(g[1, 2], fd, rtol=1e-3, atol=1e-6)


def test_warm_start_reaches_the_same_matrix():
    L = _logits(6, 2)
    cold = project(L, 0.1)
    zeros = (jnp.zeros(6), jnp.zeros(6))
    warm = project(L + 0.01, 0.1, cold.potentials)
    again = project(L + 0.01, 0.1, zeros)
    np.testing.assert_allclose(warm.matrix, again.matrix, atol=1e-5)
    assert int(warm.iterations) < int(again.iterations)


def test_rounding_matches_brute_force():
    for seed in range(3):
        L = np.asarray(_logits(6, seed))
        perm = np.asarray(sinkhorn.round_to_permutation(jnp.asarray(L)))
        best = max(itertools.permutations(range(6)), key=lambda p: L[range(6), p].sum())
        assert tuple(perm) == best


def test_rounding_under_jit_and_vmap():
    Ls = jnp.stack([_logits(7, s) for s in range(3)])
    batched = jax.jit(jax.vmap(sinkhorn.round_to_permutation))(Ls)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], sinkhorn.round_to_permutation(Ls[i]))
        assert sorted(np.asarray(batched[i]).tolist()) == list(range(7))


def test_diagnostics_at_a_vertex_and_at_the_barycentre():
    n = 6
    perm = jnp.asarray([2, 0, 1, 5, 3, 4])
    P = sinkhorn.permutation_matrix(perm)
    at_vertex = sinkhorn.relaxation_diagnostics(P, perm)
    assert float(at_vertex["marginal_error"]) == 0.0
    assert float(at_vertex["distance_to_permutation"]) == 0.0
    assert float(at_vertex["mass_on_permutation"]) == 1.0

    centre = sinkhorn.relaxation_diagnostics(jnp.full((n, n), 1.0 / n), perm)
    # ||J/n - P||_F^2 = n - 1, so the distance is sqrt((n - 1) / (2 n)).
    np.testing.assert_allclose(
        centre["distance_to_permutation"], np.sqrt((n - 1) / (2 * n)), rtol=1e-6
    )
    np.testing.assert_allclose(centre["mass_on_permutation"], 1.0 / n, rtol=1e-6)
    off = sinkhorn.relaxation_diagnostics(2.0 * P, perm)
    np.testing.assert_allclose(off["marginal_error"], 1.0)


def test_channel_correlation_finds_a_scaled_permutation():
    rng = np.random.default_rng(0)
    X = np.maximum(rng.standard_normal((400, 5)), 0)
    X[:, 3] = 0.0  # a dead unit
    perm = np.array([4, 2, 0, 1, 3])
    Y = X[:, perm] * np.array([0.5, 2.0, 1.0, 3.0, 1.5])
    C = np.asarray(sinkhorn.channel_correlation(jnp.asarray(X), jnp.asarray(Y)))
    assert np.isfinite(C).all()
    alive = perm != 3
    np.testing.assert_allclose(C[np.arange(5)[alive], perm[alive]], 1.0, rtol=1e-6)
    np.testing.assert_allclose(C[:, 3], 0.0)
    found = np.asarray(sinkhorn.round_to_permutation(jnp.asarray(C)))
    np.testing.assert_array_equal(found[alive], perm[alive])

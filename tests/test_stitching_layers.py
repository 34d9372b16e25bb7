"""Stitching layers: one interface, exact initialisations, hard maps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symjax.groups import Monomial
from symjax.stitching import layers

N = 5


def _features(seed=0, m=300, n=N):
    """Non-negative ("post-ReLU") features with every channel alive."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(np.maximum(rng.standard_normal((m, n)), 0) + 0.1)


@pytest.mark.parametrize("method", layers.METHODS)
@pytest.mark.parametrize("shape", [(4, N), (2, 3, 3, N)])
def test_every_class_maps_channels_last_features(method, shape):
    layer = layers.make_layer(method)
    X = _features()
    params, state = layer.init(jax.random.key(0), N, jnp.float64, (X, 2.0 * X))
    h = jnp.asarray(np.random.default_rng(1).standard_normal(shape))
    out, new_state = layer.apply(params, state, h, jnp.asarray(0.05))
    assert out.shape == shape
    hard = layer.harden(params, new_state, jnp.asarray(0.05))
    assert isinstance(hard, layers.Affine | Monomial)
    assert hard.apply(h, -1).shape == shape
    # Channels only: pixels and examples never mix.
    if len(shape) == 4:
        np.testing.assert_allclose(
            hard.apply(h, -1)[1, 2], hard.apply(h[1:2, 2:3], -1)[0, 0], atol=1e-12
        )


@pytest.mark.parametrize("method", ["full", "low_rank", "sparse", "orthogonal"])
def test_training_map_equals_hard_map_for_affine_classes(method):
    # A zero tolerance keeps every entry of the sparse layer.
    options = {"tolerance": 0.0} if method == "sparse" else {}
    layer = layers.make_layer(method, init_mode="neutral", **options)
    params, state = layer.init(jax.random.key(1), N, jnp.float64)
    params = jax.tree_util.tree_map(
        lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape, p.dtype),
        params,
    )
    h = jnp.asarray(np.random.default_rng(2).standard_normal((7, N)))
    out, _ = layer.apply(params, state, h, jnp.asarray(1.0))
    hard = layer.harden(params, state, jnp.asarray(1.0))
    np.testing.assert_allclose(out, hard.apply(h), rtol=1e-12, atol=1e-12)


def test_full_match_initialisation_solves_least_squares():
    X = _features(0)
    W = jnp.asarray(np.random.default_rng(3).standard_normal((N, N)))
    b = jnp.arange(N, dtype=jnp.float64)
    Y = X @ W.T + b[None, :]
    params, _ = layers.make_layer("full", ridge=0.0).init(
        jax.random.key(0), N, jnp.float64, (X, Y)
    )
    np.testing.assert_allclose(params["W"], W, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(params["b"], b, rtol=1e-8, atol=1e-8)


def test_low_rank_match_initialisation_recovers_a_rank_r_map():
    rng = np.random.default_rng(4)
    X = _features(1)
    U, V = rng.standard_normal((N, 2)), rng.standard_normal((2, N))
    Y = X @ (U @ V).T
    layer = layers.make_layer("low_rank", rank=2, ridge=0.0)
    params, _ = layer.init(jax.random.key(0), N, jnp.float64, (X, Y))
    hard = layer.harden(params, {}, 0.0)
    np.testing.assert_allclose(hard.matrix, U @ V, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(hard.bias, 0.0, atol=1e-8)
    assert np.linalg.matrix_rank(np.asarray(hard.matrix), tol=1e-8) == 2

    # Rank 1 cannot represent it: the fit leaves a residual.
    layer1 = layers.make_layer("low_rank", rank=1, ridge=0.0)
    p1, _ = layer1.init(jax.random.key(0), N, jnp.float64, (X, Y))
    residual = layer1.harden(p1, {}, 0.0).apply(X) - Y
    assert float(jnp.linalg.norm(residual)) > 1e-2 * float(jnp.linalg.norm(Y))


def test_orthogonal_match_initialisation_and_orthogonality():
    X = jnp.asarray(np.random.default_rng(5).standard_normal((200, N)))
    Q = jax.random.orthogonal(jax.random.key(6), N, dtype=jnp.float64)
    layer = layers.make_layer("orthogonal")
    params, state = layer.init(jax.random.key(0), N, jnp.float64, (X, X @ Q.T))
    np.testing.assert_allclose(
        layer.harden(params, state, 0.0).matrix, Q, rtol=1e-8, atol=1e-8
    )
    K = jax.random.normal(jax.random.key(7), (N, N), jnp.float64)
    M = layer.harden({"K": K}, state, 0.0).matrix
    np.testing.assert_allclose(M.T @ M, jnp.eye(N), atol=1e-10)


def test_g_relu_match_initialisation_finds_the_monomial():
    """With f~ features ``Y = A X`` for ``A`` in G_ReLU, the matching gives ``A``."""
    X = _features(2)
    A = Monomial(jnp.asarray([3, 0, 4, 1, 2]), jnp.asarray([0.5, 2.0, 1.0, 3.0, 0.7]))
    layer = layers.make_layer("g_relu")
    params, state = layer.init(jax.random.key(0), N, jnp.float64, (X, A.apply(X)))
    hard, diagnostics = layer.evaluate(params, state, jnp.asarray(0.01))
    np.testing.assert_array_equal(hard.perm, A.perm)
    np.testing.assert_allclose(hard.scale, A.scale, rtol=1e-10)
    np.testing.assert_allclose(hard.apply(X), A.apply(X), rtol=1e-10)
    assert float(diagnostics["distance_to_permutation"]) < 0.01


def test_g_relu_two_stages_share_the_hard_map():
    layer = layers.make_layer("g_relu", init_mode="neutral")
    params, state = layer.init(jax.random.key(3), N, jnp.float64)
    params["log_scale"] = jnp.linspace(-0.5, 0.5, N)
    hard = layer.harden(params, state, jnp.asarray(0.1))
    assert sorted(np.asarray(hard.perm).tolist()) == list(range(N))
    assert bool((hard.scale > 0).all())
    rounded = layer.successor
    p2, s2 = layer.advance(hard)
    h = _features(4, m=6)
    np.testing.assert_allclose(
        rounded.apply(p2, s2, h, 0.0)[0], hard.apply(h), rtol=1e-12
    )
    np.testing.assert_allclose(rounded.harden(p2, s2, 0.0).scale, hard.scale)


def test_g_relu_relaxed_map_is_a_scaled_doubly_stochastic_matrix():
    layer = layers.make_layer("g_relu", init_mode="neutral", threshold=1e-6)
    params, state = layer.init(jax.random.key(4), N, jnp.float64)
    params = {
        "logits": jax.random.normal(jax.random.key(5), (N, N), jnp.float64),
        "log_scale": jnp.log(jnp.arange(1.0, N + 1)),
    }
    eye = jnp.eye(N, dtype=jnp.float64)
    M, _ = layer.apply(params, state, eye, jnp.asarray(0.3))  # rows: M e_j
    M = M.T
    S = M / jnp.arange(1.0, N + 1)[None, :]
    np.testing.assert_allclose(S.sum(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(S.sum(1), 1.0, atol=1e-5)
    assert bool((S > 0).all())


def test_g_relu_relaxation_learns_a_permutation_from_neutral_start():
    """Gradient descent through Sinkhorn, with annealing, finds ``P D`` itself."""
    X = _features(5, m=64)
    A = Monomial(jnp.asarray([2, 4, 0, 1, 3]), jnp.asarray([1.5, 0.5, 1.0, 2.0, 1.2]))
    Y = A.apply(X)
    layer = layers.make_layer("g_relu", init_mode="neutral", noise=0.01)
    params, state = layer.init(jax.random.key(6), N, jnp.float64)

    def loss(params, state, eps):
        out, new_state = layer.apply(params, state, X, eps)
        return jnp.mean((out - Y) ** 2), new_state

    with jax.numpy_rank_promotion("allow"):
        step = jax.jit(jax.value_and_grad(loss, has_aux=True))
        for t in range(300):
            eps = 0.2 * (0.01 / 0.2) ** (t / 299)
            (_, state), g = step(params, state, eps)
            params = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, g)
    hard = layer.harden(params, state, jnp.asarray(0.01))
    np.testing.assert_array_equal(hard.perm, A.perm)
    np.testing.assert_allclose(hard.scale, A.scale, rtol=0.2)

    # The second stage fits D with P fixed.
    rounded = layer.successor
    params, state = layer.advance(hard)

    def loss2(params):
        return jnp.mean((rounded.apply(params, state, X, 0.0)[0] - Y) ** 2)

    step2 = jax.jit(jax.grad(loss2))
    for _ in range(300):
        params = jax.tree_util.tree_map(lambda p, g: p - 0.2 * g, params, step2(params))
    np.testing.assert_allclose(
        rounded.harden(params, state, 0.0).scale, A.scale, rtol=1e-2
    )


def test_sparse_layer_penalty_and_zeroing():
    layer = layers.make_layer("sparse", l1=0.5, tolerance=0.1)
    W = jnp.asarray([[1.0, 0.05, -0.2], [0.0, -2.0, 0.15], [0.3, 0.01, 1.0]])
    params = {"W": W, "b": jnp.zeros(3)}
    np.testing.assert_allclose(layer.regularizer(params), 0.5 * jnp.abs(W).sum())
    hard, diagnostics = layer.evaluate(params, {}, 0.0)
    expected = jnp.where(jnp.abs(W) >= 0.2, W, 0.0)
    np.testing.assert_array_equal(hard.matrix, expected)
    np.testing.assert_allclose(diagnostics["density"], 5 / 9, rtol=1e-6)


def test_layers_vmap_over_pairs():
    layer = layers.make_layer("g_relu")
    X = jnp.stack([_features(s) for s in range(3)])
    A = Monomial(jnp.asarray([1, 2, 3, 4, 0]), jnp.ones(N))
    Y = jax.vmap(lambda x: A.apply(x))(X)
    keys = jax.random.split(jax.random.key(0), 3)
    params, state = jax.vmap(lambda k, x, y: layer.init(k, N, jnp.float64, (x, y)))(
        keys, X, Y
    )
    hard = jax.vmap(layer.harden, in_axes=(0, 0, None))(params, state, 0.01)
    np.testing.assert_array_equal(hard.perm, np.tile(A.perm, (3, 1)))


def test_make_layer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        layers.make_layer("birkhoff")
    with pytest.raises(TypeError, match="rank"):
        layers.make_layer("full", rank=2)
    with pytest.raises(ValueError, match="init_mode"):
        layers.make_layer("full", init_mode="random")
    with pytest.raises(ValueError, match="rank"):
        layers.make_layer("low_rank", rank=0)
    with pytest.raises(ValueError, match="features"):
        layers.make_layer("full").init(jax.random.key(0), N)

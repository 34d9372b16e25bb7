"""Intertwiner groups: Table 1, Lemma 3.1 and Theorem 3.3."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symjax import groups
from symjax.groups import Dense, Monomial, activation_group, intertwines, lemma_phi

TABLE1 = [
    ("identity", {}),
    ("sigmoid", {}),
    ("relu", {}),
    ("leaky_relu", {"negative_slope": 0.2}),
    ("leaky_relu", {"negative_slope": -0.5}),
    ("rbf", {}),
    ("power", {"degree": 2}),
    ("power", {"degree": 3}),
    # Beyond Table 1: the monomial elements found numerically (see EXTRA below).
    ("tanh", {}),
    ("gelu", {}),
    ("elu", {}),
]
IDS = [f"{n}{list(p.values())}" for n, p in TABLE1]
N = 6


def _draw(group, seed, n=N):
    return group.sample(jax.random.key(seed), n, jnp.float64)


@pytest.mark.parametrize("name,params", TABLE1, ids=IDS)
def test_closed_form_phi_intertwines(name, params):
    """sigma(A x) = phi(A) sigma(x) for random A in G_sigma (Table 1)."""
    g = activation_group(name, **params)
    for seed in range(5):
        A = _draw(g, seed)
        x = 2.0 * jax.random.normal(jax.random.key(100 + seed), (64, N), jnp.float64)
        lhs = g.sigma(A.apply(x))
        rhs = g.phi(A).apply(g.sigma(x))
        np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-12)
        assert g.contains(A)


@pytest.mark.parametrize("name,params", TABLE1, ids=IDS)
def test_lemma_phi_agrees_with_closed_form(name, params):
    g = activation_group(name, **params)
    A = _draw(g, 3)
    np.testing.assert_allclose(
        lemma_phi(g.sigma, A.matrix()), g.phi(A).matrix(), rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("name,params", TABLE1, ids=IDS)
def test_phi_is_homomorphism_on_group(name, params):
    g = activation_group(name, **params)
    A, B = _draw(g, 1), _draw(g, 2)
    np.testing.assert_allclose(
        g.phi(A.compose(B)).matrix(),
        g.phi(A).matrix() @ g.phi(B).matrix(),
        rtol=1e-10,
        atol=1e-10,
    )
    np.testing.assert_allclose(
        g.phi(A.inverse()).matrix(),
        np.linalg.inv(g.phi(A).matrix()),
        rtol=1e-10,
        atol=1e-10,
    )


@pytest.mark.parametrize("name", ["rbf", "power"])
def test_lemma_phi_not_homomorphism_on_gl(name):
    """Off the group, sigma(A)sigma(I)^-1 is not multiplicative (Lemma 3.1's scope)."""
    g = activation_group(name)
    sig = g.sigma
    A = jax.random.normal(jax.random.key(0), (N, N), jnp.float64)
    B = jax.random.normal(jax.random.key(1), (N, N), jnp.float64)
    lhs = lemma_phi(sig, A @ B)
    rhs = lemma_phi(sig, A) @ lemma_phi(sig, B)
    assert np.abs(np.asarray(lhs - rhs)).max() > 1e-2


def test_structured_operations_match_dense():
    g = activation_group("leaky_relu", negative_slope=0.1)
    A, B = _draw(g, 0), _draw(g, 1)
    Am, Bm = A.matrix(), B.matrix()
    np.testing.assert_allclose(A.compose(B).matrix(), Am @ Bm, atol=1e-12)
    np.testing.assert_allclose(A.inverse().matrix(), np.linalg.inv(Am), atol=1e-12)
    np.testing.assert_allclose(
        A.inverse_transpose().matrix(), np.linalg.inv(Am).T, atol=1e-12
    )
    x = jax.random.normal(jax.random.key(2), (3, N, 4), jnp.float64)
    np.testing.assert_allclose(
        A.apply(x, axis=1), jnp.einsum("ij,bjk->bik", Am, x), atol=1e-12
    )
    D = Dense(Am)
    np.testing.assert_allclose(D.apply(x, axis=1), A.apply(x, axis=1), atol=1e-12)
    back = Monomial.from_matrix(Am)
    np.testing.assert_array_equal(back.perm, A.perm)


def test_contains_rejects_outsiders():
    relu = activation_group("relu")
    sig = activation_group("sigmoid")
    rbf = activation_group("rbf")
    P = Monomial(jnp.array([2, 0, 1]), jnp.array([1.0, 1.0, 1.0]))
    neg = Monomial(jnp.array([2, 0, 1]), jnp.array([1.0, -1.0, 1.0]))
    scaled = Monomial(jnp.array([2, 0, 1]), jnp.array([2.0, 0.5, 1.0]))
    assert sig.contains(P) and not sig.contains(scaled)
    assert relu.contains(scaled) and not relu.contains(neg)
    assert rbf.contains(neg) and not rbf.contains(scaled)
    Q = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))[0]
    assert not relu.contains(Q)
    assert activation_group("identity").contains(Q)


def test_leaky_relu_slope_one_is_general_linear():
    g = activation_group("leaky_relu", negative_slope=1.0)
    assert g.kind == "general_linear"
    A = _draw(g, 0)
    assert isinstance(A, Dense)
    assert intertwines(g.sigma, A, jax.random.key(1), rtol=1e-10, atol=1e-10)
    assert (
        activation_group("leaky_relu", negative_slope=0.5).kind == "positive_monomial"
    )


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="Unknown activation"):
        activation_group("swish")
    with pytest.raises(TypeError, match="negative_slope"):
        activation_group("leaky_relu", slope=0.1)
    with pytest.raises(ValueError, match="not a subgroup"):
        activation_group("sigmoid").restrict("positive_monomial")


# The numeric checker on activations outside Table 1: which structured elements
# (a permutation, a sign flip, a positive rescaling) intertwine.
PERM = Monomial(jnp.array([1, 2, 3, 0]), jnp.ones(4, jnp.float64))
FLIP = Monomial(jnp.arange(4), jnp.array([-1.0, 1.0, 1.0, 1.0]))
SCALE = Monomial(jnp.arange(4), jnp.array([2.0, 1.0, 0.5, 1.0]))
EXTRA = {
    # activation: (permutation, sign flip, positive scaling)
    "tanh": (True, True, False),
    "gelu": (True, False, False),
    "silu": (True, False, False),
    "softplus": (True, False, False),
    "elu": (True, False, False),
    "relu": (True, False, True),
    "sigmoid": (True, False, False),
    "rbf": (True, True, False),
}


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_numeric_checker_on_extra_activations(name):
    sigma = activation_group(name).sigma
    found = tuple(
        intertwines(sigma, A, jax.random.key(0), rtol=1e-9, atol=1e-9)
        for A in (PERM, FLIP, SCALE)
    )
    assert found == EXTRA[name]


def test_theorem_3_3_ray_set():
    """G_ReLU maps the rays {R>=0 e_i} to themselves; a generic matrix does not."""
    g = activation_group("relu")
    E = np.eye(N)
    A = np.asarray(_draw(g, 0).matrix())
    images = A @ E
    for col in images.T:
        nz = np.flatnonzero(np.abs(col) > 1e-12)
        assert len(nz) == 1 and col[nz[0]] > 0
    G = np.random.default_rng(0).standard_normal((N, N))
    assert any(np.sum(np.abs(col) > 1e-12) > 1 for col in (G @ E).T)


def test_theorem_3_3_stabilised_ray_sets_are_coordinate_rays():
    """A finite ray set mapped to itself by every element of G_ReLU is made of
    +-e_j rays: check that constructed sets with an off-axis ray are not stable."""
    g = activation_group("relu")
    elements = [np.asarray(_draw(g, s, 3).matrix()) for s in range(20)]

    def normalise(v):
        return tuple(np.round(v / np.linalg.norm(v), 8))

    def stable(rays):
        ray_set = {normalise(r) for r in rays}
        return all({normalise(A @ r) for r in rays} == ray_set for A in elements)

    coord = [np.eye(3)[i] * s for i in range(3) for s in (1, -1)]
    assert stable(coord)
    assert stable([np.eye(3)[i] for i in range(3)])
    assert not stable(coord + [np.array([1.0, 1.0, 0.0])])
    assert not stable([np.array([1.0, 1.0, 1.0])])
    assert not stable([np.eye(3)[0]])  # a permutation moves e_0 to another axis


def test_sampling_is_jittable_and_vmappable():
    g = activation_group("relu")
    keys = jax.random.split(jax.random.key(0), 8)
    batch = jax.vmap(lambda k: g.sample(k, N))(keys)
    assert batch.perm.shape == (8, N) and batch.scale.shape == (8, N)
    single = jax.jit(lambda k: g.sample(k, N))(keys[3])
    np.testing.assert_array_equal(single.perm, batch.perm[3])
    np.testing.assert_allclose(single.scale, batch.scale[3], rtol=1e-6)
    assert float(jnp.mean(g.sample(jax.random.key(1), 20000).scale)) == pytest.approx(
        1.0, abs=0.05
    )


def test_activation_names_listed():
    assert set(groups.ACTIVATIONS) >= {"identity", "relu", "tanh", "gelu", "elu"}


@pytest.mark.parametrize("n", [6, 64])
def test_contains_is_scale_free_for_general_linear(n):
    """Invertibility is judged by conditioning, not by a determinant that shrinks
    geometrically with n."""
    g = activation_group("identity")
    for seed in range(3):
        A = _draw(g, seed, n)
        assert g.contains(A) and g.contains(A.matrix())
    assert g.contains(0.5 * np.eye(n))
    nearly_singular = np.diag([1e6] * (n - 1) + [1e-9])
    assert not g.contains(nearly_singular)
    assert not g.contains(
        Monomial(jnp.arange(n), jnp.asarray(np.diag(nearly_singular)))
    )


@pytest.mark.parametrize("name,params", TABLE1, ids=IDS)
def test_lemma_phi_at_a_wide_layer(name, params):
    """sigma(I_n) stays well conditioned at n = 64 though its determinant is tiny."""
    g = activation_group(name, **params)
    A = _draw(g, 4, 64)
    np.testing.assert_allclose(
        lemma_phi(g.sigma, A.matrix()), g.phi(A).matrix(), rtol=1e-8, atol=1e-8
    )
    assert intertwines(g.sigma, A, jax.random.key(5), rtol=1e-8, atol=1e-8)


def test_power_of_degree_one_is_general_linear():
    g = activation_group("power", degree=1)
    assert g.kind == "general_linear"
    A = _draw(g, 0)
    assert isinstance(A, Dense)
    assert intertwines(g.sigma, A, jax.random.key(1), rtol=1e-10, atol=1e-10)

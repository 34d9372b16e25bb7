"""CKA measures: invariances, alignment, bounds, degenerate inputs, conventions."""

import jax
import numpy as np
import pytest

from symjax.groups import activation_group
from symjax.similarity import (
    CKA,
    cka_similarity_from_grams,
    grelu_cka_similarity,
    linear_cka_similarity,
    linear_gram,
    max_gram,
    rbf_cka_similarity,
)
from symjax.similarity import hsic as H
from symjax.similarity.cka import _center_jit, _standardize_jit
from symjax.similarity.kernels import max_gram_channels

# Few distinct shapes, so that the jitted steps compile once and are reused.
N = 40
DENSE = (6,)
CONV = (3, 2, 5)

GRELU_INVARIANT = [
    CKA("max", convention="standard"),
    CKA("max", convention="authors"),
    CKA("max", estimator="biased"),
    CKA("linear", convention="authors"),
    CKA("rbf", convention="authors"),
]
ORTHOGONAL_INVARIANT = [
    CKA("linear"),
    CKA("linear", estimator="biased"),
    CKA("rbf"),
    CKA("rbf", estimator="biased", bandwidth=0.4),
]


def relu_features(seed, n=N, shape=DENSE):
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal((n, *shape)), 0) + 0.1 * rng.standard_normal(
        (n, *shape)
    )


def related_pair(seed, shape=DENSE, shape_b=None):
    """Two representations of the same inputs with a shared component."""
    rng = np.random.default_rng(seed)
    X = relu_features(seed, shape=shape)
    Y = np.roll(X, 1, axis=-1) ** 2 + 0.5 * rng.standard_normal(X.shape)
    if shape_b is not None:
        Y = relu_features(seed + 100, shape=shape_b)
        Y[..., 0] += X.reshape(N, -1)[:, 0].reshape((N,) + (1,) * (len(shape_b) - 1))
    return X, Y


def grelu_element(seed, c, wide=False):
    g = activation_group("relu").sample(jax.random.key(seed), c, dtype=np.float64)
    if wide:  # scales over six orders of magnitude
        scale = 10.0 ** np.random.default_rng(seed).uniform(-3, 3, c)
        g = type(g)(g.perm, scale)
    return g


@pytest.mark.parametrize("measure", GRELU_INVARIANT, ids=str)
@pytest.mark.parametrize("shape", [DENSE, CONV], ids=["dense", "conv"])
def test_grelu_invariance_with_shifts(measure, shape):
    X, Y = related_pair(0, shape)
    c = shape[-1]
    A, B = grelu_element(1, c, wide=True), grelu_element(2, c)
    rng = np.random.default_rng(3)
    v, w = 5 * rng.standard_normal(c), 5 * rng.standard_normal(c)
    base = measure(X, Y)
    moved = measure(np.asarray(A.apply(X)) + v, np.asarray(B.apply(Y)) + w)
    np.testing.assert_allclose(moved, base, rtol=0, atol=1e-10)
    assert abs(base) < 0.999  # the pair is not trivially aligned


@pytest.mark.parametrize("measure", GRELU_INVARIANT, ids=str)
def test_grelu_alignment_is_one(measure):
    X = relu_features(4, shape=CONV)
    A = grelu_element(5, 5, wide=True)
    shift = np.random.default_rng(6).standard_normal(5)
    assert measure(X, np.asarray(A.apply(X)) + shift) == pytest.approx(1.0, abs=1e-10)


def test_grelu_cka_is_also_invariant_to_sign_flips():
    """The normalised max-kernel self-Gram does not see the sign of a channel."""
    X, Y = related_pair(7)
    signs = np.array([1, -1, 1, -1, -1, 1.0])
    np.testing.assert_allclose(
        grelu_cka_similarity(X * signs, Y), grelu_cka_similarity(X, Y), atol=1e-12
    )


def _orthogonal(seed, d):
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


@pytest.mark.parametrize("measure", ORTHOGONAL_INVARIANT, ids=str)
def test_orthogonal_and_isotropic_scale_invariance(measure):
    X, Y = related_pair(8)
    Q, R = _orthogonal(9, 6), _orthogonal(10, 6)
    base = measure(X, Y)
    np.testing.assert_allclose(measure(3.7 * X @ Q, 0.02 * Y @ R), base, atol=1e-10)
    assert measure(X, 1e3 * X @ Q) == pytest.approx(1.0, abs=1e-10)


def test_generic_orthogonal_map_lowers_grelu_cka_only():
    X = relu_features(11)
    XQ = X @ _orthogonal(12, 6)
    assert grelu_cka_similarity(X, XQ) < 0.95
    assert CKA("linear", convention="authors")(X, XQ) < 0.99
    assert linear_cka_similarity(X, XQ) == pytest.approx(1.0, abs=1e-10)
    assert rbf_cka_similarity(X, XQ) == pytest.approx(1.0, abs=1e-10)


def test_linear_cka_is_not_grelu_invariant_under_standard_convention():
    X, Y = related_pair(13)
    A = grelu_element(14, 6, wide=True)
    assert (
        abs(
            linear_cka_similarity(np.asarray(A.apply(X)), Y)
            - linear_cka_similarity(X, Y)
        )
        > 1e-3
    )


def _adversarial(seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, 6))
    dead = X.copy()
    dead[:, [1, 4]] = 0.0
    outlier = X.copy()
    outlier[0] *= 1e4
    rank1 = np.outer(rng.standard_normal(N), rng.standard_normal(6))
    dup = np.repeat(X[: N // 4], 4, axis=0)
    sparse = np.maximum(X - 1.5, 0)
    sparse[:, 0] += 1e-3 * rng.standard_normal(N)
    return {
        "gauss": X,
        "dead": dead,
        "outlier": outlier,
        "rank1": rank1,
        "dup": dup,
        "sparse": sparse,
        "huge": 1e150 * X,
        "tiny": 1e-150 * X,
    }


@pytest.mark.parametrize("kernel", ["linear", "rbf", "max"])
@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_bounds_on_random_and_adversarial_inputs(kernel, estimator):
    measure = CKA(kernel, estimator)
    low = 0.0 if (estimator == "biased" and kernel != "max") else -1.0
    inputs = list(_adversarial(15).values()) + [relu_features(16)]
    for X in inputs:
        for Y in inputs[::2] + [X]:
            # The ratio itself, before compare() clips rounding excursions.
            a, b = measure.prepare(X), measure.prepare(Y)
            cross = float(np.sum(np.asarray(a.centered) * np.asarray(b.centered)))
            cross *= H.normalizer(a.n, estimator)
            raw = cross / np.sqrt(a.self_hsic * b.self_hsic)
            assert low - 1e-12 <= raw <= 1.0 + 1e-12, (raw, measure)
            assert measure.compare(a, b) == pytest.approx(raw, abs=1e-12)
    assert measure(inputs[0], inputs[0]) == 1.0


def test_scale_extremes_do_not_change_the_value():
    X, Y = related_pair(17)
    for kernel in ("linear", "rbf", "max"):
        m = CKA(kernel)
        base = m(X, Y)
        np.testing.assert_allclose(m(1e150 * X, 1e-150 * Y), base, atol=1e-12)
        x32, y32 = (1e30 * X).astype(np.float32), (1e-30 * Y).astype(np.float32)
        np.testing.assert_allclose(m(x32, y32), base, atol=2e-5)


def test_unbiased_cka_of_unrelated_features_can_be_negative():
    values = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        values.append(
            linear_cka_similarity(
                rng.standard_normal((30, 4)), rng.standard_normal((30, 4))
            )
        )
        values.append(
            grelu_cka_similarity(
                rng.standard_normal((30, 4)), rng.standard_normal((30, 4))
            )
        )
    assert all(np.isfinite(values)) and min(values) < 0


def test_dead_units_give_no_nan():
    X, Y = related_pair(18)
    Xd = X.copy()
    Xd[:, [1, 4]] = 0.0
    Xs = np.delete(X, [1, 4], axis=1)
    for measure in (CKA("linear"), CKA("rbf")):  # dead units add nothing to K
        np.testing.assert_allclose(measure(Xd, Y), measure(Xs, Y), atol=1e-12)
    for measure in (CKA("max"), CKA("max", convention="authors")):
        # A dead channel contributes a product 0 to the max: K_ij >= 0 thereafter.
        s = measure(Xd, Y)
        assert np.isfinite(s) and -1 <= s <= 1
        Kd = (Xd[:, None] * Xd[None]).max(-1)
        assert Kd.min() >= 0


@pytest.mark.parametrize("kernel", ["linear", "rbf", "max"])
def test_constant_layer_raises(kernel):
    X, _ = related_pair(19)
    const = np.full((N, 6), 3.3)
    for convention in ("standard", "authors"):
        with pytest.raises(ValueError, match="constant|median"):
            CKA(kernel, convention=convention)(X, const)
    with pytest.raises(ValueError, match="constant|median"):
        CKA(kernel)(np.full((N, 6), 0.1, np.float32), X)


def test_bad_inputs_raise_clear_errors():
    X, Y = related_pair(20)
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        grelu_cka_similarity(bad, Y)
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        linear_cka_similarity(X, bad)
    with pytest.raises(ValueError, match="at least 4 samples"):
        grelu_cka_similarity(X[:3], Y[:3])
    assert np.isfinite(linear_cka_similarity(X[:3], Y[:3], estimator="biased"))
    with pytest.raises(ValueError, match="same inputs"):
        grelu_cka_similarity(X, Y[:-1])
    with pytest.raises(ValueError, match="shape"):
        grelu_cka_similarity(X[:, :, None], Y)
    with pytest.raises(TypeError, match="real numbers"):
        linear_cka_similarity(X + 1j, Y)
    with pytest.raises(ValueError, match="convention"):
        CKA("max", convention="kornblith")


def test_inputs_are_never_modified():
    for dtype in (np.float32, np.float64):
        X, Y = (a.astype(dtype) for a in related_pair(21, shape=CONV))
        X0, Y0 = X.copy(), Y.copy()
        for kernel in ("rbf", "max"):
            CKA(kernel, convention="authors")(X, Y)
        linear_cka_similarity(X, Y, method="features")
        np.testing.assert_array_equal(X, X0)
        np.testing.assert_array_equal(Y, Y0)


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
@pytest.mark.parametrize("convention", ["standard", "authors"])
def test_linear_cka_from_features_equals_from_grams(estimator, convention):
    X, Y = related_pair(22, shape=CONV, shape_b=(7,))
    kw = dict(estimator=estimator, convention=convention)
    np.testing.assert_allclose(
        linear_cka_similarity(X, Y, method="features", **kw),
        linear_cka_similarity(X, Y, method="gram", **kw),
        rtol=1e-10,
    )


def test_cka_similarity_from_grams_matches_feature_measure():
    X, Y = related_pair(23, shape_b=(7,))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    for estimator in ("unbiased", "biased"):
        np.testing.assert_allclose(
            cka_similarity_from_grams(
                linear_gram(Xc), linear_gram(Yc), estimator=estimator
            ),
            linear_cka_similarity(X, Y, estimator=estimator),
            rtol=1e-10,
        )
    # Kornblith et al.'s biased linear CKA in feature space.
    expect = np.linalg.norm(Yc.T @ Xc) ** 2 / (
        np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc)
    )
    np.testing.assert_allclose(
        linear_cka_similarity(X, Y, estimator="biased"), expect, rtol=1e-10
    )


def test_cka_from_grams_is_scale_free():
    """A finite Gram matrix at any scale gives the same value, never an overflow."""
    X, Y = related_pair(30, shape_b=(7,))
    K, L = linear_gram(X - X.mean(0)), linear_gram(Y - Y.mean(0))
    base = cka_similarity_from_grams(K, L)
    for scale in (1e100, 1e153, 1e-160):
        np.testing.assert_allclose(
            cka_similarity_from_grams(scale * K, L / scale), base, rtol=1e-10
        )
    K32, L32 = (1e20 * K).astype(np.float32), (1e-20 * L).astype(np.float32)
    np.testing.assert_allclose(cka_similarity_from_grams(K32, L32), base, atol=1e-5)


def test_different_widths_and_spatial_sizes():
    X, Y = related_pair(24, shape=CONV, shape_b=(7,))
    for kernel in ("linear", "rbf", "max"):
        s = CKA(kernel)(X, Y)
        assert -1 <= s <= 1 and np.isfinite(s)
        np.testing.assert_allclose(CKA(kernel)(Y, X), s, atol=1e-12)


def test_tile_size_does_not_change_the_value():
    X, Y = related_pair(25, shape=CONV)
    np.testing.assert_allclose(
        CKA("max", block_size=16)(X, Y), CKA("max", block_size=N)(X, Y), atol=1e-12
    )


def test_float32_agrees_with_float64():
    X, Y = related_pair(26, shape=CONV)
    for kernel in ("linear", "rbf", "max"):
        m = CKA(kernel, convention="authors")
        np.testing.assert_allclose(
            m(X.astype(np.float32), Y.astype(np.float32)), m(X, Y), atol=1e-5
        )


def test_second_call_does_not_recompile():
    X, Y = related_pair(27)
    m = CKA("max")
    m(X, Y)
    jitted = (_standardize_jit, max_gram_channels, _center_jit)
    before = [f._cache_size() for f in jitted]
    m(X + 1.0, Y * 2.0)
    assert [f._cache_size() for f in jitted] == before


def _authors_transcription(f1, f2, kernel):
    """The bench README's description of the paper code's CKAs, in numpy (NHWC)."""

    def gram(h):
        h = h - h.mean(axis=(0, 1, 2), keepdims=True)
        h = h / np.linalg.norm(h.reshape(-1, h.shape[-1]), axis=0)
        if kernel == "max":
            K = np.einsum("ihwc,jhwc->ijc", h, h).max(-1)
        else:
            K = np.einsum("ihwc,jhwc->ij", h, h)
        return K - np.diag(np.diag(K))

    def hsic1(K, L):
        n = len(K)
        return (
            (K * L).sum()
            + K.sum() * L.sum() / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (K.sum(1) * L.sum(1)).sum()
        ) / (n * (n - 3))

    K, L = gram(f1), gram(f2)
    return hsic1(K, L) / np.sqrt(hsic1(K, K) * hsic1(L, L))


@pytest.mark.parametrize("kernel", ["max", "linear"])
def test_authors_convention_matches_their_definition(kernel):
    X, Y = related_pair(28, shape=CONV)
    np.testing.assert_allclose(
        CKA(kernel, convention="authors")(X, Y),
        _authors_transcription(X, Y, kernel),
        rtol=1e-10,
    )


def test_cka_on_indefinite_grams_is_defined():
    """Max-kernel Grams are indefinite (Lemma 5.5 fails); CKA stays in [-1, 1]."""
    rng = np.random.default_rng(29)
    for _ in range(5):
        K = np.asarray(max_gram(rng.standard_normal((N, 6))))
        L = np.asarray(max_gram(rng.standard_normal((N, 6))))
        assert np.linalg.eigvalsh(K)[0] < 0
        for estimator in ("unbiased", "biased"):
            s = cka_similarity_from_grams(K, L, estimator=estimator)
            assert np.isfinite(s) and -1 <= s <= 1
        assert cka_similarity_from_grams(K, K) == 1.0
    # A Gram matrix with nothing to centre (constant off the diagonal) is rejected.
    with pytest.raises(ValueError, match="vanishes"):
        cka_similarity_from_grams(np.ones((N, N)) + np.eye(N), L)

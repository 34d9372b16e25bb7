"""Tests for symjax.rotations: Haar sampling and the geodesic Q^alpha."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from symjax import rotations


def _random_rotation(seed, n):
    """A random rotation drawn with numpy, independent of the code under test."""
    Q, R = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    Q = Q * np.sign(np.diag(R))[None, :]
    Q[:, 0] *= np.sign(np.linalg.det(Q))
    return Q


def _rot2(theta):
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


@pytest.fixture(scope="module")
def haar_samples():
    """4000 draws of 4 x 4 matrices from each sampler, in one compiled call."""

    @jax.jit
    def draw(keys):
        def one(k):
            return rotations.haar_orthogonal(k, 4), rotations.haar_special_orthogonal(
                k, 4
            )

        return jax.vmap(one)(keys)

    O, S = draw(jax.random.split(jax.random.key(1), 4000))
    return np.asarray(O), np.asarray(S)


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_haar_orthogonal_is_orthogonal(n):
    Q = rotations.haar_orthogonal(jax.random.key(n), n)
    np.testing.assert_allclose(Q.T @ Q, np.eye(n), atol=1e-12)


def test_haar_cosets(haar_samples):
    O, S = haar_samples
    np.testing.assert_allclose(
        np.einsum("kji,kjl->kil", O, O), np.eye(4)[None].repeat(4000, 0), atol=1e-12
    )
    dets = np.linalg.det(O)
    np.testing.assert_allclose(np.abs(dets), 1.0, atol=1e-10)
    # Both cosets of O(n), about equally often (standard error 0.008).
    assert abs(np.mean(dets > 0) - 0.5) < 0.04
    np.testing.assert_allclose(np.linalg.det(S), 1.0, atol=1e-10)


@pytest.mark.parametrize("special", [False, True])
def test_haar_trace_moments(haar_samples, special):
    # For Haar measure on O(n) and SO(n), n >= 3: E[tr Q] = 0 and E[tr(Q)^2] = 1.
    # Standard errors over 4000 draws: 0.016 and 0.022 (sd(tr) = 1, sd(tr^2) = sqrt(2)).
    tr = np.trace(haar_samples[int(special)], axis1=1, axis2=2)
    assert abs(tr.mean()) < 0.07
    assert abs((tr**2).mean() - 1.0) < 0.1


def test_uncorrected_qr_fails_the_trace_moment():
    # The moment test above has power: LAPACK's QR without the sign correction
    # gives E[tr Q] of about -0.8 here.
    G = np.random.default_rng(0).normal(size=(4000, 4, 4))
    tr = np.trace(np.linalg.qr(G)[0], axis1=1, axis2=2)
    assert abs(tr.mean()) > 0.5


@pytest.mark.parametrize("n", [2, 3, 8, 17])
def test_fractional_rotation_group_properties(n):
    Q = _random_rotation(n, n)
    Q0, Qa, Qb, Qab, Q1 = rotations.fractional_rotation(Q, [0.0, 0.3, 0.45, 0.75, 1.0])
    np.testing.assert_array_equal(Q0, np.eye(n))
    np.testing.assert_allclose(Q1, Q, atol=1e-10)
    np.testing.assert_allclose(Qa @ Qb, Qab, atol=1e-10)
    np.testing.assert_allclose(Qb @ Qa, Qab, atol=1e-10)
    for R in (Qa, Qb, Qab):
        np.testing.assert_allclose(R.T @ R, np.eye(n), atol=1e-12)
        np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-10)


@pytest.mark.parametrize("n", [3, 6, 11])
def test_fractional_rotation_is_the_principal_power(n):
    # The minimal geodesic is the principal power exp(alpha log Q), which scipy
    # computes independently (Schur-Pade); no eigenvalue -1 here almost surely.
    Q = _random_rotation(10 + n, n)
    for alpha in (0.25, 0.6):
        want = scipy.linalg.fractional_matrix_power(Q, alpha)
        np.testing.assert_allclose(want.imag, 0.0, atol=1e-8)
        got = rotations.fractional_rotation(Q, alpha)
        np.testing.assert_allclose(got, want.real, atol=1e-8)
        # Minimal: the geodesic distance scales by alpha.
        np.testing.assert_allclose(
            np.linalg.norm(scipy.linalg.logm(got)),
            alpha * np.linalg.norm(scipy.linalg.logm(Q)),
            rtol=1e-7,
        )


@pytest.mark.parametrize("theta", [-2.5, -0.4, 0.4, 2.5, 3.1])
def test_fractional_rotation_keeps_the_direction(theta):
    # Reading the angle as arccos(cos theta) would give R(+|theta| / 2) at alpha=1/2.
    Q = scipy.linalg.block_diag(_rot2(theta), np.eye(1))
    P = _random_rotation(3, 3)
    Q = P @ Q @ P.T
    half = rotations.fractional_rotation(Q, 0.5)
    np.testing.assert_allclose(
        half, P @ scipy.linalg.block_diag(_rot2(theta / 2), 1.0) @ P.T, atol=1e-10
    )
    np.testing.assert_allclose(rotations.fractional_rotation(Q, 1.0), Q, atol=1e-10)


@pytest.mark.parametrize(
    "diag",
    [[-1.0, -1.0, 1.0], [-1.0, -1.0, -1.0, -1.0], [-1.0, -1.0, 1.0, 1.0, -1.0, -1.0]],
)
def test_fractional_rotation_with_eigenvalue_minus_one(diag):
    n = len(diag)
    P = _random_rotation(7, n)
    for Q in (np.diag(diag), P @ np.diag(diag) @ P.T):
        half, one = rotations.fractional_rotation(Q, [0.5, 1.0])
        np.testing.assert_allclose(one, Q, atol=1e-10)
        np.testing.assert_allclose(half @ half, Q, atol=1e-10)
        np.testing.assert_allclose(half.T @ half, np.eye(n), atol=1e-12)
        np.testing.assert_allclose(np.linalg.det(half), 1.0, atol=1e-10)
        # Minimal: every angle of Q^(1/2) is pi/2 or 0, so |log| = (pi/2) * sqrt(#-1).
        np.testing.assert_allclose(
            np.linalg.norm(scipy.linalg.logm(half)),
            0.5 * np.pi * np.sqrt(np.sum(np.asarray(diag) < 0)),
            rtol=1e-7,
        )
        # Deterministic.
        np.testing.assert_array_equal(half, rotations.fractional_rotation(Q, 0.5))


def test_fractional_rotation_of_identity_and_repeated_angles():
    np.testing.assert_array_equal(
        rotations.fractional_rotation(np.eye(6), 0.7), np.eye(6)
    )
    # Two planes at the same angle: Q^(1/3) cubed is Q.
    P = _random_rotation(11, 5)
    Q = P @ scipy.linalg.block_diag(_rot2(2.0), _rot2(2.0), 1.0) @ P.T
    third = rotations.fractional_rotation(Q, 1 / 3)
    np.testing.assert_allclose(third @ third @ third, Q, atol=1e-10)
    np.testing.assert_allclose(
        np.linalg.norm(scipy.linalg.logm(third)), 2.0 / 3 * 2, rtol=1e-7
    )


def test_fractional_rotation_float32_input():
    Q = rotations.haar_special_orthogonal(jax.random.key(5), 32, dtype=jnp.float32)
    out = rotations.fractional_rotation(Q, 1.0)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, Q, atol=1e-5)
    np.testing.assert_array_equal(rotations.fractional_rotation(Q, 0.0), np.eye(32))


def test_fractional_rotation_rejects_bad_input():
    with pytest.raises(ValueError, match="orthogonal"):
        rotations.fractional_rotation(np.ones((3, 3)), 0.5)
    with pytest.raises(ValueError, match="determinant"):
        rotations.fractional_rotation(np.diag([-1.0, 1.0, 1.0]), 0.5)
    with pytest.raises(ValueError, match="square"):
        rotations.fractional_rotation(np.eye(3)[:2], 0.5)


def test_rotate_features():
    h = np.random.default_rng(0).normal(size=(2, 3, 4, 5))
    R = _random_rotation(1, 5)
    np.testing.assert_array_equal(rotations.rotate_features(h, np.eye(5)), h)
    out = rotations.rotate_features(h, R)
    np.testing.assert_allclose(out, np.einsum("abcj,ij->abci", h, R), atol=1e-12)
    # Unit i of the rotated features is row i of R dotted with the features.
    np.testing.assert_allclose(
        out[..., 2], np.tensordot(h, R[2], axes=(3, 0)), atol=1e-12
    )
    moved = rotations.rotate_features(jnp.moveaxis(h, -1, 1), R, axis=1)
    np.testing.assert_allclose(jnp.moveaxis(moved, 1, -1), out, atol=1e-12)
    with pytest.raises(ValueError, match="R must be"):
        rotations.rotate_features(h, np.eye(4))

"""Similarity matrices across layers, and the registry of measures."""

import numpy as np
import pytest

from symjax.similarity import (
    CKA,
    MEASURES,
    Procrustes,
    get_measure,
    similarity_matrix,
)

N = 24


def model_features(seed):
    """Features of three layers of a small fake model: conv, conv, dense."""
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.standard_normal((N, 4, 4, 3)), 0)
    h = np.maximum(
        x.reshape(N, 2, 2, 2, 2, 3).mean((2, 4)) @ rng.standard_normal((3, 6)), 0
    )
    z = np.maximum(h.mean((1, 2)) @ rng.standard_normal((6, 5)), 0)
    return {"conv0": x, "conv1": h, "dense": z}


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_matrix_entries_equal_pairwise_calls(name):
    a, b = model_features(0), model_features(1)
    measure = MEASURES[name]
    S = similarity_matrix(a, b, name)
    assert S.shape == (3, 3) and S.dtype == np.float64
    for i, x in enumerate(a.values()):
        for j, y in enumerate(b.values()):
            np.testing.assert_allclose(S[i, j], measure(x, y), atol=1e-12)


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_a_model_against_itself_has_unit_diagonal(name):
    a = model_features(2)
    S = similarity_matrix(a, a, get_measure(name, convention="authors"))
    np.testing.assert_allclose(np.diag(S), 1.0, atol=1e-7)
    assert np.all(S <= 1.0)


def test_layer_name_in_errors():
    a, b = model_features(3), model_features(4)
    b["dense"] = np.full_like(b["dense"], 2.0)
    with pytest.raises(ValueError, match="'dense' of features_b"):
        similarity_matrix(a, b, "grelu_cka")
    b = model_features(4)
    b["conv1"] = b["conv1"][:-1]
    with pytest.raises(ValueError, match="'conv1' of features_b"):
        similarity_matrix(a, b, "cka_linear")
    with pytest.raises(ValueError, match="non-empty"):
        similarity_matrix({}, b, "cka_linear")


def test_registry():
    assert set(MEASURES) == {
        "grelu_cka",
        "cka_linear",
        "cka_rbf",
        "grelu_procrustes",
        "orthogonal_procrustes",
    }
    for name, m in MEASURES.items():
        assert m.name == name and m.kind == "similarity"
    assert get_measure("grelu_cka", convention="authors") == CKA(
        "max", convention="authors"
    )
    assert get_measure("grelu_procrustes", center=True) == Procrustes(
        "grelu", center=True
    )
    with pytest.raises(ValueError, match="unknown measure"):
        get_measure("svcca")
    with pytest.raises(TypeError, match="accepts the options"):
        get_measure("cka_linear", center=True)
    with pytest.raises(TypeError, match="accepts the options"):
        get_measure("cka_linear", kernel="max")
    with pytest.raises(TypeError):
        MEASURES["mine"] = CKA()
    with pytest.raises(TypeError, match="prepare"):
        similarity_matrix(model_features(0), model_features(1), measure=len)

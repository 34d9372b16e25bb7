"""Similarity matrices across the layers of two models (paper Section 5 figures).

``similarity_matrix(features_a, features_b, measure)`` compares every activation
layer of model A with every one of model B on the same inputs. Each layer's
per-model work (validation, normalisation and, for CKA, the centred ``[n, n]`` Gram
matrix and its self-HSIC) is done once; each of the ``La * Lb`` pairs then costs
one ``[n, n]`` inner product (CKA) or one ``[c, c']`` cross matrix and an
assignment or SVD (Procrustes). Averaging over pairs of seeds is left to the
caller: ``np.mean([similarity_matrix(a, b, m) for a, b in pairs], axis=0)``.

Memory: model A's ``La`` prepared states are kept while model B's layers are
prepared one at a time, i.e. ``(La + 1)`` centred ``[n, n]`` matrices for CKA.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from symjax.similarity import registry

log = logging.getLogger(__name__)


def similarity_matrix(
    features_a: Mapping[str, object],
    features_b: Mapping[str, object],
    measure="grelu_cka",
) -> np.ndarray:
    """The **similarity** of every layer of model A with every layer of model B.

    Args:
      features_a: layer name -> ``[n, d]`` or ``[n, h, w, c]`` features of model A,
        in the order the rows should have (dict order).
      features_b: the same for model B (columns), computed on the same ``n`` inputs
        in the same order.
      measure: a name in :data:`symjax.similarity.MEASURES` or a measure object
        (e.g. ``CKA(kernel="max", convention="authors")``) with ``prepare`` and
        ``compare``.

    Returns:
      ``[La, Lb]`` float64 array; entry ``[i, j]`` is the similarity of layer ``i``
      of A and layer ``j`` of B (1 = identical up to the measure's group).

    Raises:
      ValueError: an empty mapping, mismatched sample counts, or any layer the
        measure rejects (the message names the layer).
    """
    measure = registry.resolve(measure)
    for label, feats in (("features_a", features_a), ("features_b", features_b)):
        if not isinstance(feats, Mapping) or not feats:
            raise ValueError(f"{label} must be a non-empty dict of layer features.")

    states_a = [_prepare(measure, x, "features_a", k) for k, x in features_a.items()]
    out = np.empty((len(states_a), len(features_b)), dtype=np.float64)
    names_a = list(features_a)
    for j, (name_b, y) in enumerate(features_b.items()):
        state_b = _prepare(measure, y, "features_b", name_b)
        for i, state_a in enumerate(states_a):
            try:
                out[i, j] = measure.compare(state_a, state_b)
            except ValueError as err:
                raise ValueError(
                    f"comparing layer {names_a[i]!r} of features_a with layer "
                    f"{name_b!r} of features_b: {err}"
                ) from err
        log.info(
            "%s: layer %s of B done (%d/%d)",
            measure.name,
            name_b,
            j + 1,
            len(features_b),
        )
    return out


def _prepare(measure, x, label: str, layer: str):
    try:
        return measure.prepare(x, f"{label}[{layer!r}]")
    except (ValueError, TypeError) as err:
        raise type(err)(f"layer {layer!r} of {label}: {err}") from err

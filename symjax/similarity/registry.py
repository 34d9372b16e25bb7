"""Measures by name, so that experiments can pick one from a configuration string.

Every entry is a **similarity** (1 = identical up to the measure's group):

=========================  ==================================  ===================
name                       measure                             range
=========================  ==================================  ===================
``grelu_cka``              G_ReLU-CKA, Definition 5.3          ``[-1, 1]``
``cka_linear``             linear CKA (unbiased HSIC)          ``[-1, 1]``
``cka_rbf``                RBF CKA, sigma = 0.8 x median       ``[-1, 1]``
``grelu_procrustes``       G_ReLU-Procrustes, Definition 5.2   ``[0, 1]``
``orthogonal_procrustes``  orthogonal Procrustes               ``[1 - 1/sqrt 2, 1]``
=========================  ==================================  ===================

The unbiased CKAs lie in ``[0, 1]`` up to estimation noise of order ``1/sqrt n``
for unrelated representations. All use ``convention="standard"`` by default;
``get_measure(name, convention="authors")`` gives the paper code's preprocessing.
"""

from __future__ import annotations

import dataclasses
import types

from symjax.similarity.cka import CKA
from symjax.similarity.procrustes import Procrustes

MEASURES = types.MappingProxyType(
    {
        "grelu_cka": CKA(kernel="max"),
        "cka_linear": CKA(kernel="linear"),
        "cka_rbf": CKA(kernel="rbf"),
        "grelu_procrustes": Procrustes(group="grelu"),
        "orthogonal_procrustes": Procrustes(group="orthogonal"),
    }
)


def get_measure(name: str, **options):
    """The measure registered as ``name``, with some options changed.

    Args:
      name: a key of :data:`MEASURES`.
      **options: fields of :class:`~symjax.similarity.cka.CKA` (``estimator``,
        ``convention``, ``bandwidth``, ``block_size``) or
        :class:`~symjax.similarity.procrustes.Procrustes` (``convention``,
        ``center``).

    Returns:
      A frozen measure object; ``measure(X, Y)`` returns the similarity.
    """
    if name not in MEASURES:
        raise ValueError(f"unknown measure {name!r}; choose one of {sorted(MEASURES)}.")
    base = MEASURES[name]
    fields = {f.name for f in dataclasses.fields(base)}
    unknown = set(options) - fields
    if unknown or "kernel" in options or "group" in options:
        raise TypeError(
            f"{name} accepts the options {sorted(fields - {'kernel', 'group'})}, "
            f"got {sorted(options)}."
        )
    return dataclasses.replace(base, **options)


def resolve(measure):
    """A measure object from a name or an object with ``prepare``/``compare``."""
    if isinstance(measure, str):
        return get_measure(measure)
    if not (hasattr(measure, "prepare") and hasattr(measure, "compare")):
        raise TypeError(
            "measure must be a name in symjax.similarity.MEASURES or an object with "
            f"prepare() and compare(), got {type(measure).__name__}."
        )
    return measure

"""Network dissection of a layer's units, in its own basis or a rotated one.

The paper's Section 6 asks whether a network's own basis is special for
interpretability: it dissects (Bau et al., 2017) the units of a layer and of its
rotations ``Q^alpha`` (see :mod:`symjax.rotations`). This package holds

* :mod:`~symjax.dissection.concepts`: the concept-data interface;
* :mod:`~symjax.dissection.broden`: the Broden-format reader and writer;
* :mod:`~symjax.dissection.colors`: per-pixel colour concepts on real images;
* :mod:`~symjax.dissection.synthetic`: a generated concept set;
* :mod:`~symjax.dissection.iou`: the dissection statistics.

Typical use::

    concepts = cifar10_color_concepts(per_class=100)
    result = dissect(features_fn, concepts, rotation=fractional_rotation(Q, 0.5))
    result.num_interpretable(), result.num_unique_concepts(), result.mean_best_iou
"""

from symjax.dissection.broden import BrodenConcepts, read_broden, write_broden
from symjax.dissection.colors import (
    COLOR_NAMES,
    cifar10_color_concepts,
    color_concepts,
    load_color_table,
)
from symjax.dissection.concepts import (
    ArrayConcepts,
    Concept,
    ConceptBatch,
    ConceptDataset,
    ConceptRecord,
)
from symjax.dissection.iou import (
    IOU_THRESHOLD,
    TOP_QUANTILE,
    DissectionResult,
    dissect,
    dissect_rotations,
)
from symjax.dissection.synthetic import synthetic_concepts

__all__ = [
    "COLOR_NAMES",
    "IOU_THRESHOLD",
    "TOP_QUANTILE",
    "ArrayConcepts",
    "BrodenConcepts",
    "Concept",
    "ConceptBatch",
    "ConceptDataset",
    "ConceptRecord",
    "DissectionResult",
    "cifar10_color_concepts",
    "color_concepts",
    "dissect",
    "dissect_rotations",
    "load_color_table",
    "read_broden",
    "synthetic_concepts",
    "write_broden",
]

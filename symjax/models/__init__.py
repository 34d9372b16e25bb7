"""Models with named activation layers, cut points and symmetry specifications.

Every model is a Flax linen module with the same interface:

- ``model.init(key, x, train=False)`` and ``model.apply(variables, x, train=False,
  start=None, stop=None)``: ``stop=l`` returns the post-activation features of cut
  point ``l`` (``f_{<=l}``); ``start=l`` reads them from ``x`` and returns the
  logits (``f_{>l}``).
- ``model.layers``: the cut points in forward order.
- every activation output is sown into ``intermediates`` under its layer name.
- ``model.symmetry_spec()``: the :class:`symjax.symmetry.SymmetrySpec` of the
  weight-space action.

:func:`get_model` builds one from a configuration dictionary.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from symjax.models.convnext import ConvNeXt
from symjax.models.mlp import MLP
from symjax.models.myrtle import Myrtle
from symjax.models.resnet import ResNet

__all__ = ["MLP", "ConvNeXt", "Myrtle", "ResNet", "MODELS", "get_model"]

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "myrtle": Myrtle,
    "resnet20": ResNet,
    "convnext": ConvNeXt,
}


def config_keys(name: str) -> tuple[str, ...]:
    """The configuration keys that model ``name`` accepts."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; choose one of {sorted(MODELS)}.")
    skip = {"parent", "name"}
    if name == "resnet20":
        skip.add("blocks_per_stage")
    return tuple(f.name for f in dataclasses.fields(MODELS[name]) if f.name not in skip)


def get_model(name: str, **config) -> nn.Module:
    """Builds a model from its name and configuration.

    Args:
      name: ``"mlp"``, ``"myrtle"``, ``"resnet20"`` or ``"convnext"``.
      **config: fields of the model class (see :func:`config_keys`), e.g.
        ``get_model("myrtle", width=64, activation="leaky_relu",
        activation_params={"negative_slope": 0.1})``.

    Returns:
      The unbound module.

    Raises:
      ValueError: for an unknown name or configuration key.
    """
    keys = config_keys(name)
    unknown = sorted(set(config) - set(keys))
    if unknown:
        raise ValueError(
            f"Unknown configuration keys {unknown} for model {name!r}; it accepts "
            f"{list(keys)}."
        )
    return MODELS[name](**config)

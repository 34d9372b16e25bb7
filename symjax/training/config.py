"""The configuration of a training run, as a frozen dataclass that round-trips JSON."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

from symjax.nn.conv import CONV_IMPLS
from symjax.training.recipes import get_recipe

_BOOKKEEPING = ("eval_batch_size", "log_every")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]")


def _flat_text(value) -> str:
    """A compact, path-safe rendering of a configuration value."""
    if isinstance(value, Mapping):
        return "-".join(f"{k}={_flat_text(v)}" for k, v in sorted(value.items()))
    if isinstance(value, list | tuple):
        return "-".join(_flat_text(v) for v in value)
    return str(value)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a zoo's trained weights, except the data files.

    Fields left ``None`` take the recipe's value (see :meth:`resolved`).

    Attributes:
      arch: model name for ``symjax.models.get_model``.
      model: keyword configuration of the model, e.g. ``{"width": 16}``.
      recipe: ``"paper"`` or ``"cpu"`` (see :mod:`symjax.training.recipes`).
      epochs: number of passes over the training split.
      batch_size: examples per step and seed.
      seeds: seeds of the models; seed ``k`` fixes the initialisation, the data
        order and the augmentation of model ``k``.
      train_size: training examples (class-balanced subset), None for all.
      val_size: validation examples carved from the training split.
      test_size: test examples (class-balanced subset), None for all 10,000.
      split_seed: seed of the train/validation/test carving, shared by all models.
      pad: translation range of the augmentation, in pixels.
      flip: random horizontal flips.
      learning_rate: overrides the recipe's learning rate.
      weight_decay: overrides the recipe's weight decay.
      eval_batch_size: batch size of evaluation.
      log_every: steps between training-metric records.
      conv_impl: convolution implementation (:mod:`symjax.nn.conv`).
      name: zoo subdirectory; None derives it from ``arch`` and ``model``.
    """

    arch: str = "myrtle"
    model: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    recipe: str = "cpu"
    epochs: int | None = None
    batch_size: int | None = None
    seeds: tuple[int, ...] = (0,)
    train_size: int | None = None
    val_size: int = 5000
    test_size: int | None = None
    split_seed: int = 0
    pad: int | None = None
    flip: bool = True
    learning_rate: float | None = None
    weight_decay: float | None = None
    eval_batch_size: int = 500
    log_every: int = 50
    conv_impl: str = "auto"
    name: str | None = None

    def __post_init__(self):
        get_recipe(self.recipe)
        object.__setattr__(self, "model", dict(self.model))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}.")
        if any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be non-negative, got {self.seeds}.")
        if self.name is not None and (not self.name or _UNSAFE.search(self.name)):
            raise ValueError(
                f"name must be non-empty and use only letters, digits and ._=- "
                f"(orbax cannot restore from other paths), got {self.name!r}."
            )
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(
                f"conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}."
            )
        for field in ("epochs", "batch_size", "eval_batch_size", "log_every"):
            value = getattr(self, field)
            if value is not None and value < 1:
                raise ValueError(f"{field} must be positive, got {value}.")

    def resolved(self) -> TrainConfig:
        """A copy whose ``None`` recipe fields and ``name`` are filled in."""
        recipe = get_recipe(self.recipe)
        return dataclasses.replace(
            self,
            epochs=recipe.epochs if self.epochs is None else self.epochs,
            batch_size=recipe.batch_size
            if self.batch_size is None
            else self.batch_size,
            pad=recipe.pad if self.pad is None else self.pad,
            name=self.run_name,
        )

    @property
    def run_name(self) -> str:
        """``name``, or ``arch`` followed by the model configuration, e.g.
        ``"myrtle_width16"`` or ``"mlp_widths512-512"``.

        Only letters, digits and ``._=-`` are kept: orbax (tensorstore) cannot
        restore from paths with brackets.
        """
        if self.name is not None:
            return self.name
        parts = [self.arch]
        for key, value in sorted(self.model.items()):
            parts.append(f"{key}{_flat_text(value)}")
        return _UNSAFE.sub("", "_".join(parts))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        out = dataclasses.asdict(self)
        out["seeds"] = list(self.seeds)
        return out

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(
                f"unknown TrainConfig fields {unknown}; known: {sorted(known)}."
            )
        fields = dict(fields)
        if "seeds" in fields:
            fields["seeds"] = tuple(fields["seeds"])
        return cls(**fields)

    def same_run(self, other: TrainConfig) -> bool:
        """Whether two configurations train identical models seed by seed: all
        fields but ``seeds``, ``eval_batch_size`` and ``log_every`` agree once
        resolved."""

        def weights_fields(config):
            fields = dataclasses.replace(config.resolved(), seeds=(0,)).to_dict()
            for key in _BOOKKEEPING:
                fields.pop(key)
            return json.loads(json.dumps(fields))

        return weights_fields(self) == weights_fields(other)

"""A multilayer perceptron with any activation of the paper's Table 1.

Activation layers (all cut points), in forward order:

``"hidden0"`` .. ``"hidden{L-1}"``
  post-activation features ``[N, widths[i]]`` of the hidden layers.

Variables: ``params/dense{i}/{kernel,bias}`` (kernel ``[in, widths[i]]``) and
``params/head/{kernel,bias}``. Inputs with more than two axes are flattened.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from symjax.models import common
from symjax.symmetry import Space, SymmetrySpec

Array = jax.Array


class MLP(nn.Module):
    """Dense layers with a coordinatewise activation, then a dense head.

    Attributes:
      widths: hidden widths, one per activation layer.
      num_classes: number of outputs.
      activation: an activation of :mod:`symjax.groups` (Table 1: ``"identity"``,
        ``"relu"``, ``"leaky_relu"``, ``"sigmoid"``, ``"rbf"``, ``"power"``).
      activation_params: its parameters, e.g. ``{"degree": 3}``.
      dtype: computation dtype.
      param_dtype: parameter dtype.
    """

    widths: tuple[int, ...] = (512, 512)
    num_classes: int = 10
    activation: str = "relu"
    activation_params: Any = ()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        object.__setattr__(
            self, "activation_params", common.freeze_params(self.activation_params)
        )
        object.__setattr__(self, "widths", tuple(self.widths))
        if not self.widths or any(int(w) != w or w < 1 for w in self.widths):
            raise ValueError(
                f"widths must be a non-empty sequence of positive integers, got "
                f"{self.widths}."
            )
        common.make_group(self.activation, self.activation_params)
        super().__post_init__()

    @property
    def layers(self) -> tuple[str, ...]:
        """Cut points in forward order."""
        return tuple(f"hidden{i}" for i in range(len(self.widths)))

    @nn.compact
    def __call__(
        self,
        x: Array,
        train: bool = False,
        start: str | None = None,
        stop: str | None = None,
    ) -> Array:
        """Computes outputs, or a piece of the network between cut points.

        Args:
          x: inputs ``[N, ...]`` (flattened to ``[N, D]``), or the features
            ``[N, widths[i]]`` of ``start``.
          train: unused (kept for the common model interface).
          start: a cut point whose features ``x`` holds, or None.
          stop: a cut point whose features are returned, or None for the outputs.

        Returns:
          Outputs ``[N, num_classes]`` or the features of ``stop``.
        """
        return common.run_cut(self, x, train=train, start=start, stop=stop)

    def _layer(self, i: int, h: Array, train: bool) -> Array:
        del train
        if i == 0:
            h = h.reshape(h.shape[0], -1)
        h = nn.Dense(
            self.widths[i],
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=f"dense{i}",
        )(h)
        return common.make_group(self.activation, self.activation_params).sigma(h)

    def _head(self, h: Array, train: bool) -> Array:
        del train
        return nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="head",
        )(h)

    @nn.nowrap
    def symmetry_spec(self) -> SymmetrySpec:
        """The weight-space symmetry of Proposition 3.4.

        Space ``"hidden{i}"`` carries the activation's whole intertwiner group
        (``GL_n`` for the identity): ``dense{i}`` is acted on by ``A`` (output axis
        and bias) and the next dense layer's input axis by ``phi(A)^{-T}``.

        Returns:
          The specification; ``layers`` maps each ``"hidden{i}"`` to itself.
        """
        group = common.make_group(self.activation, self.activation_params)
        spaces, axes = {}, {}
        for i, name in enumerate(self.layers):
            spaces[name] = Space(self.widths[i], group)
            kernel_in = None if i == 0 else (self.layers[i - 1], "in")
            axes[f"params/dense{i}/kernel"] = (kernel_in, (name, "out"))
            axes[f"params/dense{i}/bias"] = ((name, "out"),)
        axes["params/head/kernel"] = ((self.layers[-1], "in"), None)
        axes["params/head/bias"] = (None,)
        return SymmetrySpec(spaces, axes, {name: name for name in self.layers})

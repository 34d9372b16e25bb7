"""The Myrtle CNN used by the paper's authors for CIFAR-10.

Four blocks of ``3x3`` convolution, BatchNorm and activation with widths
``c, 2c, 4c, 8c``; ``2x2`` max pooling after the second, third and fourth blocks; a
final ``4x4`` max pooling and a dense layer to the classes. Without BatchNorm the
convolutions carry biases (the variant the authors used for the rotation penalty).

Activation layers (all cut points), in forward order:

``"block0"`` .. ``"block3"``
  post-activation features ``[N, H, W, C]`` of each block, before its pooling
  (``32, 32, 16, 8`` pixels and ``c, 2c, 4c, 8c`` channels for CIFAR inputs).

Variables: ``params/conv{i}/kernel`` (``[3, 3, in, out]``), ``params/conv{i}/bias``
(without BatchNorm), ``params/bn{i}/{scale,bias}`` and
``batch_stats/bn{i}/{mean,var}`` (with BatchNorm), ``params/head/{kernel,bias}``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from symjax.models import common
from symjax.symmetry import Space, SymmetrySpec

Array = jax.Array


class Myrtle(nn.Module):
    """The four-block Myrtle CNN.

    Attributes:
      width: ``c``, the width of the first block (the paper uses 64).
      num_classes: number of logits.
      activation: an activation of :mod:`symjax.groups` (``"relu"``,
        ``"leaky_relu"``, ``"sigmoid"``, ...).
      activation_params: its parameters, e.g. ``{"negative_slope": 0.1}``.
      batch_norm: BatchNorm after each convolution (then the convolutions have no
        bias); False gives the authors' variant with biases and no BatchNorm.
      dtype: computation dtype.
      param_dtype: parameter dtype.
    """

    width: int = 64
    num_classes: int = 10
    activation: str = "relu"
    activation_params: Any = ()
    batch_norm: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        object.__setattr__(
            self, "activation_params", common.freeze_params(self.activation_params)
        )
        if int(self.width) != self.width or self.width < 1:
            raise ValueError(f"width must be a positive integer, got {self.width}.")
        common.make_group(self.activation, self.activation_params)
        super().__post_init__()

    @property
    def layers(self) -> tuple[str, ...]:
        """Cut points in forward order."""
        return tuple(f"block{i}" for i in range(4))

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels of the four blocks."""
        return tuple(self.width * 2**i for i in range(4))

    @nn.compact
    def __call__(
        self,
        x: Array,
        train: bool = False,
        start: str | None = None,
        stop: str | None = None,
    ) -> Array:
        """Computes logits, or a piece of the network between cut points.

        Args:
          x: images ``[N, H, W, 3]`` (``H = W = 32`` for CIFAR-10), or the features
            of ``start``.
          train: BatchNorm uses batch statistics (pass ``mutable=["batch_stats"]``).
          start: a cut point whose features ``x`` holds, or None.
          stop: a cut point whose features are returned, or None for the logits.

        Returns:
          Logits ``[N, num_classes]`` or the features of ``stop``.
        """
        return common.run_cut(self, x, train=train, start=start, stop=stop)

    def _layer(self, i: int, h: Array, train: bool) -> Array:
        if i >= 2:
            h = nn.max_pool(h, (2, 2), strides=(2, 2))
        h = nn.Conv(
            self.widths[i],
            (3, 3),
            padding=((1, 1), (1, 1)),
            use_bias=not self.batch_norm,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=f"conv{i}",
        )(h)
        if self.batch_norm:
            h = nn.BatchNorm(
                use_running_average=not train,
                momentum=0.9,
                epsilon=1e-5,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"bn{i}",
            )(h)
        return common.make_group(self.activation, self.activation_params).sigma(h)

    def _head(self, h: Array, train: bool) -> Array:
        del train
        h = nn.max_pool(h, (2, 2), strides=(2, 2))
        # The final 4x4 max pooling covers the whole 4x4 map of a 32x32 input; it is
        # taken over all pixels so that other input sizes also reach the head.
        h = jnp.max(h, axis=(1, 2))
        return nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="head",
        )(h)

    @nn.nowrap
    def symmetry_spec(self) -> SymmetrySpec:
        """The weight-space symmetry of Proposition 3.4.

        Space ``"block{i}"`` carries the post-activation features of block ``i``.
        With BatchNorm, the convolution feeding it is acted on by the permutation
        part of ``A`` (output axis), BatchNorm's scale and bias by ``A``, its running
        statistics by the permutation part; without, the convolution's output axis
        and bias by ``A``. The next convolution's input axis (or the head's) is
        acted on by ``phi(A)^{-T}``.

        Returns:
          The specification; ``layers`` maps ``"block{i}"`` to space ``"block{i}"``.

        Note:
          Max pooling commutes with permutations and positive scalings but not with
          sign flips, so the spaces of blocks 1-3 (pooled) keep only the elements
          whose ``phi(A)`` has non-negative scales; BatchNorm keeps only monomial
          elements. The groups are restricted accordingly (for example ReLU keeps
          its whole group; odd powers lose their signs; the identity becomes the
          positive monomials, or ``GL_n`` on block 0 without BatchNorm).
        """
        group = common.make_group(self.activation, self.activation_params)
        spaces, axes = {}, {}
        for i, name in enumerate(self.layers):
            spaces[name] = Space(
                self.widths[i],
                common.compatible_group(
                    group, monomial=self.batch_norm, nonnegative_phi=i >= 1
                ),
            )
            kernel_in = None if i == 0 else (self.layers[i - 1], "in")
            if self.batch_norm:
                axes[f"params/conv{i}/kernel"] = common.conv_spec(
                    kernel_in, (name, "perm")
                )
                axes.update(common.batch_norm_spec(f"bn{i}", name))
            else:
                axes[f"params/conv{i}/kernel"] = common.conv_spec(
                    kernel_in, (name, "out")
                )
                axes[f"params/conv{i}/bias"] = ((name, "out"),)
        axes["params/head/kernel"] = ((self.layers[-1], "in"), None)
        axes["params/head/bias"] = (None,)
        return SymmetrySpec(spaces, axes, {name: name for name in self.layers})

"""ResNet20 for CIFAR-10 (He et al. 2016, Section 4.2).

A ``3x3`` stem convolution, three stages of ``n`` basic blocks (``n = 3`` gives 20
layers) with ``16, 32, 64`` channels times a width multiplier, global average
pooling and a dense head. A basic block computes

.. math:: h \\mapsto \\sigma(\\mathrm{BN}(W_2\\, \\sigma(\\mathrm{BN}(W_1 h))) + s(h)),

where the shortcut ``s`` is the identity, or on the first block of stages 1 and 2
takes every second pixel and pads the channels with zeros on both sides ("option
A"), so the old channels sit in the middle of the new ones. With
``residual_activation=False`` the outer ``sigma`` is dropped and the residual stream
is linear (the design the paper's Section 6 discusses).

Activation layers, in forward order (stages and blocks count from 0):

``"stem"``
  the stem's post-activation features ``[N, H, W, C0]`` (a cut point);
``"stage{s}.block{b}.inner"``
  the activation inside block ``b`` of stage ``s`` (recorded in
  ``intermediates`` but not a cut point: the rest of the network also needs the
  block's input, through the shortcut);
``"stage{s}.block{b}"``
  the residual stream after the block (a cut point), ``[N, H_s, W_s, C_s]``.

Variables: ``params/stem_conv/kernel``, ``stem_bn``, and for each block
``stage{s}_block{b}_conv{0,1}/kernel`` and ``stage{s}_block{b}_bn{0,1}`` (BatchNorm
``scale``, ``bias`` in ``params``, ``mean``, ``var`` in ``batch_stats``), then
``params/head/{kernel,bias}``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from symjax.models import common
from symjax.symmetry import Space, SymmetrySpec

Array = jax.Array

_BASE_WIDTHS = (16, 32, 64)


def pad_shortcut(h: Array, channels: int) -> Array:
    """The option-A shortcut: every second pixel, channels zero-padded on both sides.

    Args:
      h: ``[N, H, W, C]`` block input.
      channels: output channels ``C' >= C``.

    Returns:
      ``[N, ceil(H / 2), ceil(W / 2), C']``; channels
      ``[(C' - C) // 2, (C' - C) // 2 + C)`` hold ``h``, the others are zero.
    """
    extra = channels - h.shape[-1]
    h = h[:, ::2, ::2, :]
    return jnp.pad(h, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


class ResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR with option-A shortcuts; ``n = 3`` is ResNet20.

    Attributes:
      width_multiplier: scales the stage widths ``16, 32, 64`` (rounded down; each
        must be at least 1).
      blocks_per_stage: ``n``.
      num_classes: number of logits.
      activation: an activation of :mod:`symjax.groups`.
      activation_params: its parameters, e.g. ``{"negative_slope": 0.1}``.
      residual_activation: apply the activation to each block's output (He et al.);
        False leaves the residual stream linear.
      dtype: computation dtype.
      param_dtype: parameter dtype.
    """

    width_multiplier: float = 1.0
    blocks_per_stage: int = 3
    num_classes: int = 10
    activation: str = "relu"
    activation_params: Any = ()
    residual_activation: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        object.__setattr__(
            self, "activation_params", common.freeze_params(self.activation_params)
        )
        if min(int(w * self.width_multiplier) for w in _BASE_WIDTHS) < 1:
            raise ValueError(
                f"width_multiplier={self.width_multiplier} leaves a stage without "
                "channels; use at least 1/16."
            )
        if int(self.blocks_per_stage) != self.blocks_per_stage or (
            self.blocks_per_stage < 1
        ):
            raise ValueError(
                "blocks_per_stage must be a positive integer, got "
                f"{self.blocks_per_stage}."
            )
        common.make_group(self.activation, self.activation_params)
        super().__post_init__()

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels of the three stages."""
        return tuple(int(w * self.width_multiplier) for w in _BASE_WIDTHS)

    @property
    def blocks(self) -> tuple[tuple[int, int], ...]:
        """``(stage, block)`` of every block in forward order."""
        n = self.blocks_per_stage
        return tuple((s, b) for s in range(3) for b in range(n))

    @property
    def layers(self) -> tuple[str, ...]:
        """Cut points in forward order: the stem and each block's output."""
        return ("stem",) + tuple(f"stage{s}.block{b}" for s, b in self.blocks)

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
          x: images ``[N, H, W, 3]``, or the features of ``start``.
          train: BatchNorm uses batch statistics (pass ``mutable=["batch_stats"]``).
          start: a cut point whose features ``x`` holds, or None.
          stop: a cut point whose features are returned, or None for the logits.

        Returns:
          Logits ``[N, num_classes]`` or the features of ``stop``.
        """
        return common.run_cut(self, x, train=train, start=start, stop=stop)

    def _conv(self, h: Array, features: int, stride: int, name: str) -> Array:
        return nn.Conv(
            features,
            (3, 3),
            strides=(stride, stride),
            padding=((1, 1), (1, 1)),
            use_bias=False,
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )(h)

    def _bn(self, h: Array, train: bool, name: str) -> Array:
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )(h)

    def _layer(self, i: int, h: Array, train: bool) -> Array:
        sigma = common.make_group(self.activation, self.activation_params).sigma
        if i == 0:
            h = self._conv(h, self.widths[0], 1, "stem_conv")
            return sigma(self._bn(h, train, "stem_bn"))

        s, b = self.blocks[i - 1]
        prefix = f"stage{s}_block{b}"
        channels = self.widths[s]
        stride = 2 if (s > 0 and b == 0) else 1
        u = self._conv(h, channels, stride, f"{prefix}_conv0")
        u = sigma(self._bn(u, train, f"{prefix}_bn0"))
        self.sow("intermediates", f"stage{s}.block{b}.inner", u)

        u = self._conv(u, channels, 1, f"{prefix}_conv1")
        u = self._bn(u, train, f"{prefix}_bn1")
        shortcut = h if stride == 1 else pad_shortcut(h, channels)
        out = u + shortcut
        return sigma(out) if self.residual_activation else out

    def _head(self, h: Array, train: bool) -> Array:
        del train
        h = jnp.mean(h, axis=(1, 2))
        return nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="head",
        )(h)

    @nn.nowrap
    def symmetry_spec(self) -> SymmetrySpec:
        """The weight-space symmetry of Proposition 3.4, with tied residual spaces.

        Spaces:

        ``"stage{s}"``
          the residual stream of stage ``s``, shared by the stem (``s = 0``) and the
          second BatchNorm of every block of the stage, whose features all add up
          along the stream. ``"stage1"`` and ``"stage2"`` embed the previous stage's
          space at offset ``(C_s - C_{s-1}) // 2``, where the option-A shortcut puts
          the old channels.
        ``"stage{s}.block{b}.inner"``
          the activation inside each block.

        Each convolution feeding a BatchNorm is acted on by the permutation part of
        its output space's element, each BatchNorm's scale and bias by the element,
        its running statistics by the permutation part, and each convolution's
        input axis (and the head's) by ``phi(A)^{-T}`` of the space it reads.

        Returns:
          The specification; ``layers`` maps every activation layer (cut points and
          ``".inner"`` layers) to its space.

        Note:
          The shortcut adds stream features, which transform by ``phi(A)``, to
          BatchNorm outputs, which transform by ``A``, so the stream keeps only
          the elements with ``phi(A) = A`` (all of ``G_ReLU``, ``G_LeakyReLU`` and
          ``G_sigmoid``; the unsigned permutations for RBF). BatchNorm keeps only
          monomial elements. Without ``residual_activation`` the stream is linear
          between blocks but still starts at the stem's activation, so the same
          group applies (for the identity activation: nonzero-scaled
          permutations).
        """
        group = common.make_group(self.activation, self.activation_params)
        stream_group = common.compatible_group(group, monomial=True, linear=True)
        inner_group = common.compatible_group(group, monomial=True)

        spaces = {}
        for s, width in enumerate(self.widths):
            embed = None
            if s > 0:
                embed = (f"stage{s - 1}", (width - self.widths[s - 1]) // 2)
            spaces[f"stage{s}"] = Space(width, stream_group, embed)
        axes = {"params/stem_conv/kernel": common.conv_spec(None, ("stage0", "perm"))}
        axes.update(common.batch_norm_spec("stem_bn", "stage0"))
        layers = {"stem": "stage0"}

        stream = "stage0"
        for s, b in self.blocks:
            prefix, inner = f"stage{s}_block{b}", f"stage{s}.block{b}.inner"
            spaces[inner] = Space(self.widths[s], inner_group)
            axes[f"params/{prefix}_conv0/kernel"] = common.conv_spec(
                (stream, "in"), (inner, "perm")
            )
            axes.update(common.batch_norm_spec(f"{prefix}_bn0", inner))
            stream = f"stage{s}"
            axes[f"params/{prefix}_conv1/kernel"] = common.conv_spec(
                (inner, "in"), (stream, "perm")
            )
            axes.update(common.batch_norm_spec(f"{prefix}_bn1", stream))
            layers[inner] = inner
            layers[f"stage{s}.block{b}"] = stream

        axes["params/head/kernel"] = ((stream, "in"), None)
        axes["params/head/bias"] = (None,)
        return SymmetrySpec(spaces, axes, layers)

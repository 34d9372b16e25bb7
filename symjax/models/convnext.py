"""A small ConvNeXt-style network for CIFAR-10 (paper Section 6).

A patchifying stem (``p x p`` convolution with stride ``p``, then LayerNorm), stages
of ConvNeXt blocks separated by down-sampling layers (LayerNorm, then a ``2x2``
convolution with stride 2), global average pooling, LayerNorm and a dense head. A
block adds to the residual stream ``h``

.. math:: \\gamma \\odot W_2\\, \\mathrm{GELU}(W_1\\, \\mathrm{LN}(\\mathrm{dw}(h))),

with a depthwise ``k x k`` convolution ``dw``, pointwise layers ``W_1`` (``C`` to
``r C``) and ``W_2`` (back to ``C``) and a per-channel layer scale ``gamma``. There
is no activation on the residual stream.

Activation layers, in forward order (stages and blocks count from 0):

``"stage{s}.block{b}.inner"``
  the GELU features ``[N, H_s, W_s, r C_s]`` inside a block (recorded in
  ``intermediates``, not a cut point: the rest of the network also needs the
  stream);
``"stage{s}.block{b}"``
  the residual stream after the block, ``[N, H_s, W_s, C_s]`` (a cut point).

Variables (all in ``params``): ``stem_conv``, ``stem_ln``; per block
``stage{s}_block{b}_{dwconv,ln,pw0,pw1}`` and ``stage{s}_block{b}_layer_scale``
(``[C_s]``, absent when ``layer_scale_init`` is None); per stage ``s > 0``
``down{s}_ln`` and ``down{s}_conv``; ``head_ln`` and ``head``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from symjax.models import common
from symjax.symmetry import Space, SymmetrySpec

Array = jax.Array


class ConvNeXt(nn.Module):
    """A ConvNeXt-style CIFAR network.

    Attributes:
      width: channels ``C_0`` of the first stage; stage ``s`` has ``2^s C_0``.
      depths: number of blocks per stage.
      patch_size: stem patch size ``p`` (32x32 inputs become ``32 / p`` pixels).
      kernel_size: depthwise kernel size ``k``.
      expansion: inverted-bottleneck ratio ``r``.
      layer_scale_init: initial value of the layer scale ``gamma``, or None for no
        layer scale.
      num_classes: number of logits.
      activation: the bottleneck activation (GELU in ConvNeXt).
      activation_params: its parameters.
      dtype: computation dtype.
      param_dtype: parameter dtype.
    """

    width: int = 64
    depths: tuple[int, ...] = (2, 2, 2)
    patch_size: int = 2
    kernel_size: int = 7
    expansion: int = 4
    layer_scale_init: float | None = 1e-6
    num_classes: int = 10
    activation: str = "gelu"
    activation_params: Any = ()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        object.__setattr__(
            self, "activation_params", common.freeze_params(self.activation_params)
        )
        object.__setattr__(self, "depths", tuple(self.depths))
        for name in ("width", "patch_size", "kernel_size", "expansion"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}.")
        if not self.depths or any(int(d) != d or d < 1 for d in self.depths):
            raise ValueError(
                f"depths must be a non-empty sequence of positive integers, got "
                f"{self.depths}."
            )
        common.make_group(self.activation, self.activation_params)
        super().__post_init__()

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels of the stages."""
        return tuple(self.width * 2**s for s in range(len(self.depths)))

    @property
    def blocks(self) -> tuple[tuple[int, int], ...]:
        """``(stage, block)`` of every block in forward order."""
        return tuple((s, b) for s, d in enumerate(self.depths) for b in range(d))

    @property
    def layers(self) -> tuple[str, ...]:
        """Cut points in forward order: each block's output."""
        return tuple(f"stage{s}.block{b}" for s, b in self.blocks)

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
          train: unused (the network has no BatchNorm); kept for the common model
            interface.
          start: a cut point whose features ``x`` holds, or None.
          stop: a cut point whose features are returned, or None for the logits.

        Returns:
          Logits ``[N, num_classes]`` or the features of ``stop``.
        """
        return common.run_cut(self, x, train=train, start=start, stop=stop)

    def _ln(self, h: Array, name: str) -> Array:
        return nn.LayerNorm(
            epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )(h)

    def _conv(self, h: Array, features: int, size: int, name: str, **kw) -> Array:
        return nn.Conv(
            features,
            (size, size),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
            **kw,
        )(h)

    def _dense(self, h: Array, features: int, name: str) -> Array:
        return nn.Dense(
            features, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )(h)

    def _layer(self, i: int, h: Array, train: bool) -> Array:
        del train
        s, b = self.blocks[i]
        channels = self.widths[s]
        if i == 0:
            p = self.patch_size
            h = self._conv(h, channels, p, "stem_conv", strides=(p, p), padding="VALID")
            h = self._ln(h, "stem_ln")
        elif b == 0:
            h = self._ln(h, f"down{s}_ln")
            h = self._conv(h, channels, 2, f"down{s}_conv", strides=(2, 2))

        prefix = f"stage{s}_block{b}"
        k = self.kernel_size
        u = self._conv(
            h,
            channels,
            k,
            f"{prefix}_dwconv",
            padding=((k // 2, (k - 1) // 2),) * 2,
            feature_group_count=channels,
        )
        u = self._ln(u, f"{prefix}_ln")
        u = self._dense(u, self.expansion * channels, f"{prefix}_pw0")
        u = common.make_group(self.activation, self.activation_params).sigma(u)
        self.sow("intermediates", f"stage{s}.block{b}.inner", u)

        u = self._dense(u, channels, f"{prefix}_pw1")
        if self.layer_scale_init is not None:
            gamma = self.param(
                f"{prefix}_layer_scale",
                nn.initializers.constant(self.layer_scale_init),
                (channels,),
                self.param_dtype,
            )
            u = u * gamma.astype(u.dtype).reshape((1,) * (u.ndim - 1) + (-1,))
        return h + u

    def _head(self, h: Array, train: bool) -> Array:
        del train
        h = self._ln(jnp.mean(h, axis=(1, 2)), "head_ln")
        return self._dense(h, self.num_classes, "head")

    @nn.nowrap
    def hidden_group(self):
        """The intertwiner group of the bottleneck activation (for GELU the
        permutations, with ``phi(A) = A``)."""
        return common.make_group(self.activation, self.activation_params)

    @nn.nowrap
    def symmetry_spec(self) -> SymmetrySpec:
        """The weight-space symmetry of Proposition 3.4.

        Spaces:

        ``"stage{s}"``
          the residual stream of stage ``s`` (permutations): the stem or
          down-sampling convolution and every block's ``pw1`` write into it, so
          one element acts on all of them.
        ``"stage{s}.block{b}.inner"``
          the bottleneck activation (permutations for GELU).

        The stream's element acts by ``A`` on what writes into the stream (output
        axis and bias of ``pw1``, the stem and down-sampling convolutions, the stem
        LayerNorm, the depthwise bias) and by its permutation part on what reads it
        after a normalisation or channel by channel (the depthwise kernel, the
        LayerNorm parameters, ``pw0``'s and the down-sampling and head layers'
        input axes, the layer scale).

        Returns:
          The specification; ``layers`` maps each cut point and ``".inner"`` layer
          to its space.

        Note:
          LayerNorm normalises across channels, so it commutes with a permutation
          of the channels but not with per-channel scales. It is invariant to one
          positive factor ``c`` shared by all channels only up to its ``epsilon``
          (``LN(c x) = LN(x)`` exactly when ``epsilon = 0``; the error is of order
          ``epsilon / var``). The stream therefore carries permutations only. The
          roles above are written so that they would also be right for ``c P``,
          which the tests use to bound the epsilon effect.
        """
        stream_group = common.permutations()
        hidden_group = self.hidden_group()
        last = len(self.depths) - 1

        spaces = {
            f"stage{s}": Space(w, stream_group) for s, w in enumerate(self.widths)
        }
        axes = {
            "params/stem_conv/kernel": common.conv_spec(None, ("stage0", "out")),
            "params/stem_conv/bias": (("stage0", "out"),),
            "params/stem_ln/scale": (("stage0", "out"),),
            "params/stem_ln/bias": (("stage0", "out"),),
            "params/head_ln/scale": ((f"stage{last}", "perm"),),
            "params/head_ln/bias": ((f"stage{last}", "perm"),),
            "params/head/kernel": ((f"stage{last}", "perm"), None),
            "params/head/bias": (None,),
        }
        for s in range(1, len(self.depths)):
            old, new = f"stage{s - 1}", f"stage{s}"
            axes[f"params/down{s}_ln/scale"] = ((old, "perm"),)
            axes[f"params/down{s}_ln/bias"] = ((old, "perm"),)
            axes[f"params/down{s}_conv/kernel"] = common.conv_spec(
                (old, "perm"), (new, "out")
            )
            axes[f"params/down{s}_conv/bias"] = ((new, "out"),)

        layers = {}
        for s, b in self.blocks:
            prefix, stream = f"stage{s}_block{b}", f"stage{s}"
            inner = f"stage{s}.block{b}.inner"
            spaces[inner] = Space(self.expansion * self.widths[s], hidden_group)
            axes[f"params/{prefix}_dwconv/kernel"] = (
                None,
                None,
                None,
                (stream, "perm"),
            )
            axes[f"params/{prefix}_dwconv/bias"] = ((stream, "out"),)
            axes[f"params/{prefix}_ln/scale"] = ((stream, "perm"),)
            axes[f"params/{prefix}_ln/bias"] = ((stream, "perm"),)
            axes[f"params/{prefix}_pw0/kernel"] = ((stream, "perm"), (inner, "out"))
            axes[f"params/{prefix}_pw0/bias"] = ((inner, "out"),)
            axes[f"params/{prefix}_pw1/kernel"] = ((inner, "in"), (stream, "out"))
            axes[f"params/{prefix}_pw1/bias"] = ((stream, "out"),)
            if self.layer_scale_init is not None:
                axes[f"params/{prefix}_layer_scale"] = ((stream, "perm"),)
            layers[inner] = inner
            layers[f"stage{s}.block{b}"] = stream
        return SymmetrySpec(spaces, axes, layers)

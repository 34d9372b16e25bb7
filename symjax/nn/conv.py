"""Two-dimensional convolution with a gradient that is fast on the CPU.

XLA's CPU backend computes the forward convolution and its input gradient at about
the speed of a matrix product, but the kernel (weight) gradient of a ``3 x 3``
convolution over a ``32 x 32`` map several times slower: it treats the whole
feature map as a convolution window. Under ``jax.vmap`` over several models (one
kernel per model) every convolution also becomes a grouped convolution, which the
CPU backend runs several times slower again than the same convolutions one by one.

The ``"im2col"`` implementation keeps XLA's forward convolution and input gradient
and changes two things:

- the kernel gradient is a sum over output pixels of outer products of input
  patches with output gradients, computed one kernel offset ``(i, j)`` at a time as
  one matrix product,

  .. math::
      \\frac{\\partial L}{\\partial w_{ijcd}} = \\sum_{n, p, q}
      \\tilde x_{n,\\, s_h p + i,\\, s_w q + j,\\, c}\\; g_{npqd},

  with ``x~`` the zero-padded input, ``s`` the strides and ``g`` the gradient of
  the output;
- under ``jax.vmap`` the convolutions are not grouped: with a batched kernel and a
  shared input the kernels are concatenated along the output channels (one wide
  convolution), with a shared kernel the batch is folded into the examples, and
  with both batched the members are convolved one after the other.

``"xla"`` is plain ``jax.lax.conv_general_dilated``; ``"auto"`` picks ``"im2col"``
on the CPU backend and ``"xla"`` elsewhere (GPU and TPU convolutions are already
fast, and grouped convolutions run well there).

Use it in a Flax model either by passing ``conv_general_dilated=conv_fn(impl)`` to
``flax.linen.Conv``, or, for a model that builds plain ``flax.linen.Conv`` layers,
by tracing it inside ``with use_conv_impl(impl):``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

CONV_IMPLS = ("xla", "im2col", "auto")
"""Accepted values of ``impl``."""

ENV_VAR = "SYMJAX_CONV_IMPL"
"""Environment variable read when ``impl`` is None (default ``"xla"``)."""

_NHWC = ("NHWC", "HWIO", "NHWC")


def resolve_conv_impl(impl: str | None = None) -> str:
    """The implementation that ``impl`` selects on the current default backend.

    Args:
      impl: ``"xla"``, ``"im2col"``, ``"auto"`` or None (read ``SYMJAX_CONV_IMPL``,
        default ``"xla"``).

    Returns:
      ``"xla"`` or ``"im2col"``.
    """
    if impl is None:
        impl = os.environ.get(ENV_VAR, "xla")
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl must be one of {CONV_IMPLS}, got {impl!r}.")
    if impl == "auto":
        return "im2col" if jax.default_backend() == "cpu" else "xla"
    return impl


def conv_general_dilated(
    lhs: Array,
    rhs: Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    *,
    impl: str | None = None,
) -> Array:
    """``jax.lax.conv_general_dilated`` with a choice of gradient implementation.

    The arguments before ``impl`` are those of ``jax.lax.conv_general_dilated``.
    With ``impl`` resolving to ``"im2col"``, two-dimensional channels-last
    convolutions (``lhs`` ``[N, H, W, C]``, ``rhs`` ``[kh, kw, C, D]``) without
    dilation or feature groups take the path described in the module docstring;
    every other call, and every call with ``"xla"``, is passed to ``lax`` as is.

    Args:
      impl: see :func:`resolve_conv_impl`.

    Returns:
      The convolution, ``[N, P, Q, D]`` in the channels-last case.

    Note:
      The ``"im2col"`` path defines the first derivative only (a ``custom_vjp``):
      forward-mode and second derivatives raise an error; use ``"xla"`` for those.
      Results agree with ``"xla"`` up to the rounding of a different summation
      order (about ``1e-6`` relative in float32).
    """
    args = (lhs, rhs, window_strides, padding)
    kwargs = dict(
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    if resolve_conv_impl(impl) == "xla":
        return lax.conv_general_dilated(*args, **kwargs)
    pads = _supported_pads(*args, **kwargs)
    if pads is None:
        return lax.conv_general_dilated(*args, **kwargs)
    return _conv2d(lhs, rhs, tuple(int(s) for s in window_strides), pads, precision)


def conv_fn(impl: str | None = None) -> Callable[..., Array]:
    """A drop-in for ``lax.conv_general_dilated`` bound to one implementation.

    Pass it as ``flax.linen.Conv(..., conv_general_dilated=conv_fn(impl))``;
    parameter names and shapes are unchanged.
    """
    resolve_conv_impl(impl)
    return functools.partial(conv_general_dilated, impl=impl)


@contextlib.contextmanager
def use_conv_impl(impl: str | None):
    """Routes every ``flax.linen.Conv`` called inside the block through ``impl``.

    Only convolutions that were not given their own ``conv_general_dilated`` are
    affected. The choice is made while a function is traced, so call (or first
    call) the jitted function inside the block, or open the block inside the
    function that ``jax.jit`` traces, as the training step does.

    Args:
      impl: see :func:`resolve_conv_impl`.
    """
    fn = conv_fn(impl)

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if (
            context.method_name != "__call__"
            or not isinstance(module, nn.Conv)
            or module.conv_general_dilated is not None
            or module.conv_general_dilated_cls is not None
        ):
            return next_fun(*args, **kwargs)
        # Bound modules are fresh clones for each call, so the field is set on
        # this clone only, and reset afterwards.
        object.__setattr__(module, "conv_general_dilated", fn)
        try:
            return next_fun(*args, **kwargs)
        finally:
            object.__setattr__(module, "conv_general_dilated", None)

    with nn.intercept_methods(interceptor):
        yield


def _supported_pads(
    lhs,
    rhs,
    window_strides,
    padding,
    *,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count,
    batch_group_count,
    precision,
    preferred_element_type,
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Explicit ``((top, bottom), (left, right))`` padding, or None if unsupported."""
    del precision
    if lhs.ndim != 4 or rhs.ndim != 4 or dimension_numbers is None:
        return None
    if not jnp.issubdtype(lhs.dtype, jnp.floating) or lhs.dtype != rhs.dtype:
        return None
    if feature_group_count != 1 or batch_group_count != 1:
        return None
    if preferred_element_type is not None:
        return None
    for dilation in (lhs_dilation, rhs_dilation):
        if dilation is not None and any(d != 1 for d in dilation):
            return None
    given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if given != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC):
        return None
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(
            lhs.shape[1:3], rhs.shape[:2], window_strides, padding
        )
    else:
        pads = padding
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    if len(pads) != 2 or any(p < 0 for pair in pads for p in pair):
        return None
    return pads


def _plain_conv(strides, pads, precision):
    """``x [N, H, W, C], w [kh, kw, C, D] -> [N, P, Q, D]`` through XLA."""

    def conv(x, w):
        return lax.conv_general_dilated(
            x, w, strides, pads, dimension_numbers=_NHWC, precision=precision
        )

    return conv


def _members_apart(fn: Callable[[Array, Array], Array], stack_axis: int):
    """``fn(x, w)`` whose ``vmap`` avoids grouped convolutions (see module doc).

    Args:
      fn: linear in ``x`` ``[N, ...]`` (per example) and in ``w`` ``[kh, kw, C,
        D]``; its output channels (last axis) come from axis ``stack_axis`` of
        ``w``, so stacking kernels along that axis stacks the outputs.
      stack_axis: 3 for a convolution, 2 for its input transpose.
    """
    f = jax.custom_batching.custom_vmap(fn)

    @f.def_vmap
    def rule(axis_size, in_batched, x, w):
        x_batched, w_batched = in_batched
        if x_batched and w_batched:
            out = jnp.stack([f(x[k], w[k]) for k in range(axis_size)])
        elif x_batched:
            y = f(x.reshape((-1,) + x.shape[2:]), w)
            out = y.reshape((axis_size, -1) + y.shape[1:])
        elif w_batched:
            wide = jnp.moveaxis(w, 0, stack_axis)
            shape = wide.shape[:stack_axis] + (-1,) + wide.shape[stack_axis + 2 :]
            y = f(x, wide.reshape(shape))
            out = jnp.moveaxis(y.reshape(y.shape[:-1] + (axis_size, -1)), -2, 0)
        else:
            return f(x, w), False
        return out, True

    return f


@functools.cache
def _forward(strides, pads, precision):
    return _members_apart(_plain_conv(strides, pads, precision), stack_axis=3)


@functools.cache
def _input_transpose(strides, pads, precision, in_hw):
    conv = _plain_conv(strides, pads, precision)

    def transpose(g, w):
        shape = (g.shape[0],) + tuple(in_hw) + (w.shape[2],)
        x = jax.ShapeDtypeStruct(shape, g.dtype)
        return jax.linear_transpose(lambda x_: conv(x_, w), x)(g)[0]

    return _members_apart(transpose, stack_axis=2)


def _kernel_gradient(x, g, strides, pads, window, precision) -> Array:
    """``dL/dw [kh, kw, C, D]`` from ``x [N, H, W, C]`` and ``g [N, P, Q, D]``."""
    n, _, _, c = x.shape
    p, q = g.shape[1:3]
    sh, sw = strides
    padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    rows = []
    for i in range(window[0]):
        for j in range(window[1]):
            patch = lax.slice(
                padded,
                (0, i, j, 0),
                (n, i + sh * (p - 1) + 1, j + sw * (q - 1) + 1, c),
                (1, sh, sw, 1),
            )
            rows.append(jnp.einsum("npqc,npqd->cd", patch, g, precision=precision))
    return jnp.stack(rows).reshape(window + (c, g.shape[-1]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv2d(x, w, strides, pads, precision):
    return _forward(strides, pads, precision)(x, w)


def _conv2d_fwd(x, w, strides, pads, precision):
    return _forward(strides, pads, precision)(x, w), (x, w)


def _conv2d_bwd(strides, pads, precision, residuals, g):
    x, w = residuals
    dx = _input_transpose(strides, pads, precision, x.shape[1:3])(g, w)
    dw = _kernel_gradient(x, g, strides, pads, w.shape[:2], precision)
    return dx, dw


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)

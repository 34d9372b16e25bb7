"""Hidden features of a model over a dataset, batch by batch.

The similarity and dissection experiments read every activation layer of a
trained model on the same images; this module runs the model once per batch in
inference mode under one jitted function and gathers the sown intermediates.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from symjax.data import normalize

log = logging.getLogger(__name__)


def _jitted_intermediates(model, preprocess):
    @jax.jit
    def run(variables, images):
        _, state = model.apply(
            variables, preprocess(images), train=False, mutable=["intermediates"]
        )
        return {k: v[0] for k, v in state["intermediates"].items()}

    return run


def layer_features(
    model,
    variables,
    images: np.ndarray,
    layers: Sequence[str] | None = None,
    batch_size: int = 250,
    preprocess=normalize,
) -> dict[str, np.ndarray]:
    """Post-activation features of ``layers`` on ``images``, in inference mode.

    Args:
      model: a :mod:`symjax.models` module.
      variables: its variables (params and batch statistics).
      images: uint8 images ``[n, H, W, C]``.
      layers: activation layers to keep (default: ``model.layers``, the cut
        points); any sown name is allowed, e.g. a ResNet's ``"...inner"`` layers.
      batch_size: images per forward pass; the last batch is padded so the
        function compiles once.
      preprocess: maps a uint8 batch to model inputs (default: CIFAR-10's
        per-channel normalisation, as in training).

    Returns:
      Layer name -> float32 features ``[n, ...]`` in input order (host memory).
    """
    layers = tuple(model.layers if layers is None else layers)
    run = _jitted_intermediates(model, preprocess)
    n = len(images)
    if n == 0:
        raise ValueError("images is empty.")
    out: dict[str, list[np.ndarray]] = {k: [] for k in layers}
    for lo in range(0, n, batch_size):
        batch = images[lo : lo + batch_size]
        real = len(batch)
        if real < batch_size and n > batch_size:
            pad = np.zeros((batch_size - real, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, pad])
        feats = run(variables, jnp.asarray(batch))
        missing = set(layers) - set(feats)
        if missing:
            raise ValueError(
                f"layers {sorted(missing)} are not activation layers of the model; "
                f"it sows {sorted(feats)}."
            )
        for k in layers:
            out[k].append(np.asarray(feats[k][:real], np.float32))
    log.debug("features of %d images at %d layers", n, len(layers))
    return {k: np.concatenate(v) for k, v in out.items()}

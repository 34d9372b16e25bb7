"""Stitching-step throughput for the Myrtle CNN, next to the authors' PyTorch code.

Times one training step of a stitching layer between two frozen Myrtle CNNs
(BatchNorm in inference mode) at batch 128 of random CIFAR-sized images, inserted
after each ReLU layer: the front ``f_{<=l}`` is only evaluated, gradients flow
through ``f~_{>l}`` to the stitching layer's parameters alone. Classes: the full
``1 x 1`` convolution and the G_ReLU layer (Sinkhorn-relaxed ``P D``, warm-started
from the previous step's potentials). The median of ``--steps`` steps after one
warm-up step (compilation) is reported as images per second, next to the figures
of ``../shared/bench/anchor_stitching.json`` (the authors' step "as written",
which also back-propagates into both networks' weights, and "frozen"). With
``--pairs K`` the same step trains ``K`` pairs at once (vmapped), and
images/second counts every pair's images.

Usage::

    python -m benchmarks.stitching                     # c = 16, 64; 1 pair
    python -m benchmarks.stitching --widths 16 --pairs 1 3 --steps 5

Machines are noisy (the 1-minute load average is printed); compare rows of one
run, and both sides only when the difference is large.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from symjax.data import normalize  # noqa: E402
from symjax.models import get_model  # noqa: E402
from symjax.stitching import StitchConfig  # noqa: E402
from symjax.stitching.train import make_stitch_step, stack_trees  # noqa: E402

ANCHOR = REPO.parent / "shared" / "bench" / "anchor_stitching.json"
THEIR_NAME = {"g_relu": "birkhoff", "full": "standard"}


def anchor_figures() -> dict:
    """``(c, method, variant, layer) -> images/s`` of the authors' code."""
    if not ANCHOR.exists():
        return {}
    results = json.loads(ANCHOR.read_text())["results"]
    mine = {v: k for k, v in THEIR_NAME.items()}
    return {
        (r["c"], mine[r["stitch"]], r["variant"], r["relu_layer"]): r["images_per_s"]
        for r in results
        if r["stitch"] in mine
    }


def time_step(width: int, method: str, layer: str, pairs: int, steps: int):
    """Median seconds of one stitching step, and the last loss."""
    model = get_model("myrtle", width=width)
    images = np.random.default_rng(0).integers(0, 256, (128, 32, 32, 3), np.uint8)
    labels = np.random.default_rng(1).integers(0, 10, (128,)).astype(np.int32)
    init = jax.jit(model.init)
    x = normalize(images[:1])
    va = stack_trees([init(jax.random.key(2 * k), x) for k in range(pairs)])
    vb = stack_trees([init(jax.random.key(2 * k + 1), x) for k in range(pairs)])

    config = StitchConfig(method=method, init="neutral")
    layer_obj = config.layer()
    n = model.widths[model.layers.index(layer)]
    keys = jax.random.split(jax.random.key(0), pairs)
    params, state = jax.vmap(lambda k: layer_obj.init(k, n, jnp.float32))(keys)
    train_step, init_opt, _ = make_stitch_step(model, model, layer, config)
    opt_state = init_opt(params)
    epsilon = jnp.asarray(0.05, jnp.float32)

    times = []
    for t in range(steps + 1):
        start = time.perf_counter()
        params, state, opt_state, loss = train_step(
            va,
            vb,
            params,
            state,
            opt_state,
            images,
            labels,
            jax.random.key(t),
            epsilon,
        )
        loss.block_until_ready()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), float(loss[0])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    p.add_argument("--methods", nargs="+", default=["g_relu", "full"])
    p.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--pairs", type=int, nargs="+", default=[1])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--json", type=Path, default=None, help="also write the rows")
    args = p.parse_args(argv)

    theirs = anchor_figures()
    print(f"backend {jax.default_backend()}, devices {jax.device_count()}")
    print(
        f"{'c':>3} {'method':>7} {'layer':>5} {'pairs':>5} {'ms/step':>8} "
        f"{'img/s':>8} | {'theirs as written':>17} {'theirs frozen':>13} "
        f"{'load':>5}"
    )
    rows = []
    for width in args.widths:
        for method in args.methods:
            for index in args.layers:
                for pairs in args.pairs:
                    layer = f"block{index}"
                    seconds, loss = time_step(width, method, layer, pairs, args.steps)
                    rate = 128 * pairs / seconds
                    written = theirs.get((width, method, "as_authors", index))
                    frozen = theirs.get((width, method, "frozen", index))
                    load = os.getloadavg()[0]
                    print(
                        f"{width:>3} {method:>7} {index:>5} {pairs:>5} "
                        f"{1e3 * seconds:8.1f} {rate:8.0f} | "
                        f"{written or float('nan'):17.0f} "
                        f"{frozen or float('nan'):13.0f} {load:5.1f}",
                        flush=True,
                    )
                    rows.append(
                        {
                            "c": width,
                            "method": method,
                            "layer": index,
                            "pairs": pairs,
                            "seconds": seconds,
                            "images_per_s": rate,
                            "theirs_as_written": written,
                            "theirs_frozen": frozen,
                            "loss": loss,
                            "loadavg_1min": load,
                        }
                    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()

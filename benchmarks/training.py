"""Training throughput of the Myrtle CNN, next to the authors' PyTorch code.

Times one full training step (augmentation, forward, backward, Adam update with
the paper recipe) at batch 128 on random CIFAR-sized images, for one model and
for several seeds vmapped together, with XLA's convolution and with the
``"im2col"`` convolution of :mod:`symjax.nn.conv`::

    python -m benchmarks.training                      # c = 16, 64; 1 and 4 seeds
    python -m benchmarks.training --widths 16 --seeds 4 --steps 5

The reference is the authors' PyTorch step measured on a machine like this one
(``../shared/bench/anchor_stitching.json``): their stitching step "as written"
back-propagates into both networks, which costs about one full training step of
the stitched network. Machines are noisy; compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from symjax.models import get_model
from symjax.training import create_states, make_optimizer, make_train_step, seed_mesh

REFERENCE = Path(__file__).resolve().parents[2] / "shared/bench/anchor_stitching.json"


def reference_images_per_s(path: Path) -> dict[int, tuple[float, float]]:
    """Width ``c`` -> (min, max) images/s of the authors' step "as written"."""
    if not path.exists():
        return {}
    results = json.loads(path.read_text())["results"]
    out = {}
    for c in sorted({r["c"] for r in results}):
        rates = [
            r["images_per_s"]
            for r in results
            if r["c"] == c and r["variant"] == "as_authors"
        ]
        out[c] = (min(rates), max(rates))
    return out


def time_training_step(width: int, seeds: int, impl: str, steps: int, batch: int):
    """Median seconds of one step after a warm-up step, and the warm-up time."""
    model = get_model("myrtle", width=width)
    mesh = seed_mesh()
    tx = make_optimizer("paper", steps_per_epoch=100, epochs=50)
    step = make_train_step(model, tx, mesh, pad=2, conv_impl=impl)
    state = create_states(model, tx, range(seeds), (32, 32, 3), mesh)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (seeds, batch, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, (seeds, batch)).astype(np.int32)

    started = time.perf_counter()
    state, metrics = step(state, images, labels)
    jax.block_until_ready(metrics)
    warmup = time.perf_counter() - started
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        state, metrics = step(state, images, labels)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - started)
    return statistics.median(times), warmup


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--impls", nargs="+", default=["xla", "im2col"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reference", type=Path, default=REFERENCE)
    parser.add_argument("--json", type=Path, default=None, help="write rows here")
    args = parser.parse_args(argv)

    reference = reference_images_per_s(args.reference)
    print(
        f"jax {jax.__version__} on {jax.device_count()} {jax.default_backend()} "
        f"device(s), load average {os.getloadavg()[0]:.1f}; batch {args.batch}"
    )
    header = (
        f"{'c':>3} {'seeds':>5} {'conv':>7} {'img/s':>8} {'step s':>8} "
        f"{'compile s':>9}  PyTorch img/s (authors, 1 model)"
    )
    print(header)
    rows = []
    for width in args.widths:
        ref = reference.get(width)
        ref_text = f"{ref[0]:.0f}-{ref[1]:.0f}" if ref else "n/a"
        for seeds in args.seeds:
            for impl in args.impls:
                step_s, warmup = time_training_step(
                    width, seeds, impl, args.steps, args.batch
                )
                rate = seeds * args.batch / step_s
                rows.append(
                    dict(
                        width=width,
                        seeds=seeds,
                        conv_impl=impl,
                        images_per_s=rate,
                        step_s=step_s,
                        compile_s=warmup,
                        pytorch_images_per_s=ref,
                    )
                )
                print(
                    f"{width:>3} {seeds:>5} {impl:>7} {rate:>8.0f} {step_s:>8.3f} "
                    f"{warmup:>9.1f}  {ref_text}",
                    flush=True,
                )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()

"""Times the similarity measures against the paper authors' implementation.

Inputs follow the recipe of ``../shared/bench/README.md`` exactly (NCHW float32
from ``default_rng(0)``, transposed to NHWC), so the values printed next to the
authors' can be compared; the measures run with ``convention="authors"`` by
default, which is their preprocessing. Each measure is called once to warm up
(compilation) and then ``--repeats`` times; the median wall time of those calls is
reported, for the whole public call on host (numpy) arrays: validation, transfer,
preprocessing, Gram matrices or cross matrices, assignment or SVD.

Peak memory is the process's resident high-water mark (``VmHWM``, Linux), reset
after the warm-up call, so it covers the timed calls and includes the resident
inputs and the JAX runtime, like the authors' figures; ``extra`` is that peak
minus the resident size just before the timed calls. On an accelerator the
device's own peak is printed too.

Usage::

    python benchmarks/similarity.py                        # quick subset
    python benchmarks/similarity.py --n 500 1000 --shapes all
    python benchmarks/similarity.py --n 2000 --shapes 512x4x4 --measures grelu_cka
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ANCHOR = REPO.parent / "shared" / "bench" / "anchor_similarity.json"
ALL_SHAPES = ("64x32x32", "128x16x16", "256x8x8", "512x4x4")
THEIR_NAME = {
    "grelu_cka": "wreath_cka",
    "cka_linear": "ortho_cka",
    "grelu_procrustes": "wreath_procrustes",
    "orthogonal_procrustes": "ortho_procrustes",
}


def paper_features(n: int, c: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The bench README's inputs, NCHW float32, returned as NHWC arrays."""
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((n, c, h, w), dtype=np.float32)
    perm = rng.permutation(c)
    E = rng.standard_normal((n, c, h, w), dtype=np.float32)
    f1 = np.maximum(Z, 0)
    f2 = np.maximum(Z[:, perm] + np.float32(0.5) * E, 0)
    nhwc = (0, 2, 3, 1)
    return (
        np.ascontiguousarray(f1.transpose(nhwc)),
        np.ascontiguousarray(f2.transpose(nhwc)),
    )


# A numpy rendering of the algorithms described in ../shared/bench/README.md (the
# paper code's per-sample loop for CKA), timed in the same run as ours with
# --reference, so that both sides see the same machine load.


def _reference_channels(h: np.ndarray, center: bool) -> np.ndarray:
    h = h - h.mean(axis=(0, 1, 2), keepdims=True) if center else h.copy()
    norms = np.sqrt((h * h).sum(axis=(0, 1, 2), keepdims=True))
    return h / np.where(norms == 0, 1, norms)


def _reference_gram(h: np.ndarray, kernel: str, deadline: float) -> np.ndarray | None:
    n = h.shape[0]
    K = np.zeros((n, n), h.dtype)
    for j in range(1, n):
        prods = (h[:j] * h[j]).sum(axis=(1, 2))  # [j, c]
        K[:j, j] = prods.max(axis=1) if kernel == "max" else prods.sum(axis=1)
        if time.perf_counter() > deadline:
            return None
    return K + K.T


def _reference_hsic1(K, L):
    n = K.shape[0]
    return (
        (K * L).sum()
        + K.sum() * L.sum() / ((n - 1) * (n - 2))
        - 2 / (n - 2) * (K.sum(1) * L.sum(1)).sum()
    ) / (n * (n - 3))


def reference(name: str, X: np.ndarray, Y: np.ndarray, budget_s: float = 60.0):
    """The paper code's algorithm for ``name`` in numpy; None past ``budget_s``."""
    import scipy.optimize

    deadline = time.perf_counter() + budget_s
    if name in ("grelu_cka", "cka_linear"):
        kernel = "max" if name == "grelu_cka" else "linear"
        K = _reference_gram(_reference_channels(X, True), kernel, deadline)
        L = (
            None
            if K is None
            else _reference_gram(_reference_channels(Y, True), kernel, deadline)
        )
        if L is None:
            return None
        return _reference_hsic1(K, L) / np.sqrt(
            _reference_hsic1(K, K) * _reference_hsic1(L, L)
        )
    c = X.shape[-1]
    if name == "grelu_procrustes":
        A, B = _reference_channels(X, False), _reference_channels(Y, False)
        C = np.tensordot(A, B, axes=([0, 1, 2], [0, 1, 2]))
        i, j = scipy.optimize.linear_sum_assignment(C, maximize=True)
        return 1 - np.sqrt(((A**2).sum() + (B**2).sum() - 2 * C[i, j].sum()) / (4 * c))
    if name == "orthogonal_procrustes":
        A, B = X / np.linalg.norm(X), Y / np.linalg.norm(Y)
        C = np.tensordot(A, B, axes=([0, 1, 2], [0, 1, 2]))
        nuc = np.linalg.svd(C, compute_uv=False).sum()
        return 1 - np.sqrt((A**2).sum() + (B**2).sum() - 2 * nuc) / 2
    return None


def time_reference(name: str, X, Y, repeats: int) -> tuple[float | None, float | None]:
    """Median time and value of :func:`reference` (no warm-up needed)."""
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = reference(name, X, Y)
        if value is None:
            return None, None
        times.append(time.perf_counter() - start)
        if times[-1] > 20:  # one slow call is enough to know
            break
    return statistics.median(times), float(value)


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def load_anchor() -> dict:
    if not ANCHOR.exists():
        return {}
    return json.loads(ANCHOR.read_text())["results"]


def time_measure(measure, X, Y, repeats: int) -> dict:
    """Warm-up call, then ``repeats`` timed calls; wall times and peak memory."""
    import jax

    value = measure(X, Y)  # compiles
    reset = _reset_peak_rss()
    rss_before = _status_kib("VmRSS")
    times, values = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        values.append(measure(X, Y))
        times.append(time.perf_counter() - start)
    peak = _status_kib("VmHWM") if reset else None
    out = {
        "value": value,
        "values_identical": all(v == value for v in values),
        "median_s": statistics.median(times),
        "runs_s": times,
        "peak_rss_mib": None if peak is None else peak / 1024,
        "extra_rss_mib": None if peak is None else (peak - rss_before) / 1024,
    }
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["device_peak_mib"] = stats["peak_bytes_in_use"] / 2**20
    return out


def _fmt_time(t: float | None) -> str:
    if t is None:
        return "–"
    return f"{t * 1e3:.0f} ms" if t < 1 else f"{t:.2f} s"


def _reference_cell(name, X, Y, repeats) -> str:
    t, v = time_reference(name, X, Y, repeats)
    return " – |" if t is None else f" {_fmt_time(t)} ({v:.4f}) |"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[500])
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=["256x8x8", "512x4x4"],
        help=f"CxHxW, or 'all' for {' '.join(ALL_SHAPES)}",
    )
    parser.add_argument(
        "--measures",
        nargs="+",
        default=[
            "grelu_cka",
            "cka_linear",
            "grelu_procrustes",
            "orthogonal_procrustes",
        ],
    )
    parser.add_argument("--convention", default="authors")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="threads of the host BLAS/LAPACK (numpy, scipy) that runs the SVD and "
        "the assignment; 0 leaves the library default. On a small shared machine "
        "its spinning threads slow a 512x512 SVD by 5-10x.",
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="also time a numpy rendering of the paper code's algorithm in this run",
    )
    args = parser.parse_args(argv)

    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    from symjax.similarity import get_measure

    if args.blas_threads:
        import threadpoolctl

        threadpoolctl.threadpool_limits(args.blas_threads, user_api="blas")
    shapes = ALL_SHAPES if args.shapes == ["all"] else args.shapes
    anchor = load_anchor()
    print(
        f"# backend={jax.default_backend()} devices={jax.devices()} "
        f"dtype={args.dtype} convention={args.convention} "
        f"blas_threads={args.blas_threads or 'default'} "
        f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f}"
    )
    header = (
        "| N | CxHxW | measure | ours | theirs | ours time | their time | speed-up "
        "| ours peak RSS (extra) | their peak RSS |"
    )
    if args.reference:
        header += " reference here: time (value) |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    results = []
    for n in args.n:
        for shape in shapes:
            c, h, w = (int(v) for v in shape.split("x"))
            X, Y = paper_features(n, c, h, w)
            X, Y = X.astype(args.dtype), Y.astype(args.dtype)
            for name in args.measures:
                options = {"convention": args.convention}
                if args.block_size and name.startswith(("grelu_cka", "cka_")):
                    options["block_size"] = args.block_size
                measure = get_measure(name, **options)
                r = time_measure(measure, X, Y, args.repeats)
                key = f"N{n}_C{c}_H{h}_W{w}"
                theirs = anchor.get(THEIR_NAME.get(name, ""), {}).get(key, {})
                t_theirs = theirs.get("median_s")
                speedup = f"{t_theirs / r['median_s']:.0f}x" if t_theirs else "–"
                v_theirs = theirs.get("value")
                rss = r["peak_rss_mib"]
                print(
                    f"| {n} | {shape} | {name} | {r['value']:.4f} | "
                    + (f"{v_theirs:.4f}" if v_theirs is not None else "–")
                    + f" | {_fmt_time(r['median_s'])} | {_fmt_time(t_theirs)} | "
                    f"{speedup} | "
                    + (f"{rss:.0f} MiB ({r['extra_rss_mib']:.0f})" if rss else "–")
                    + " | "
                    + (
                        f"{theirs['peak_rss_mib']:.0f} MiB"
                        if theirs.get("peak_rss_mib")
                        else "–"
                    )
                    + " |"
                    + (
                        _reference_cell(name, X, Y, args.repeats)
                        if args.reference
                        else ""
                    ),
                    flush=True,
                )
                results.append({"N": n, "shape": shape, "measure": name, **r})
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Similarity of hidden layers across independently trained models (Section 5).

For pairs of seeds from a zoo, compares every activation layer of one model with
every layer of the other on the same test images, with each measure, and writes

- ``similarity.jsonl``: one record per (architecture, pair, measure) with the
  ``[La, Lb]`` matrix (rerunning skips the records already there);
- ``table2.csv``: G_ReLU-Procrustes against orthogonal Procrustes similarity at
  matching layers (the paper's Table 2), mean and standard deviation over pairs;
- ``figure2_<arch>.png``: heat maps of G_ReLU-CKA and linear CKA averaged over
  pairs (the paper's Figures 2 and 5).

The images come from the test split: nothing is selected on them, they are only
measured. ``--convention`` picks the preprocessing (``authors`` by default, the
paper's: each channel centred and unit-normalised over samples and positions);
records of each convention are kept apart. Usage::

    python -m experiments.similarity --zoo zoo/myrtle_w16 --out reports/similarity
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import time
from pathlib import Path

import numpy as np

from experiments import common
from symjax.data import load_cifar10
from symjax.features import layer_features
from symjax.similarity import get_measure, similarity_matrix

log = logging.getLogger(__name__)

MEASURES = ("grelu_cka", "cka_linear", "grelu_procrustes", "orthogonal_procrustes")
LABELS = {
    "grelu_cka": "G_ReLU-CKA",
    "cka_linear": "linear CKA",
    "cka_rbf": "RBF CKA",
    "grelu_procrustes": "G_ReLU-Procrustes",
    "orthogonal_procrustes": "orthogonal Procrustes",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--zoo",
        type=Path,
        nargs="+",
        required=True,
        help="zoo directories, one per architecture",
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--num-pairs", type=int, default=3)
    p.add_argument("--num-images", type=int, default=500)
    p.add_argument(
        "--measures", nargs="+", default=list(MEASURES), choices=sorted(LABELS)
    )
    p.add_argument(
        "--convention",
        default="authors",
        choices=["authors", "standard"],
        help="preprocessing of the measures (symjax.similarity): 'authors' (the "
        "default) centres and unit-normalises each channel over samples and "
        "positions, as the paper's figures were made; 'standard' follows "
        "Kornblith et al. (centred flattened columns)",
    )
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0, help="seed of the image subset")
    return p.parse_args(argv)


def run_architecture(zoo: Path, args, test_images: np.ndarray, store) -> None:
    """Fills ``store`` with the similarity matrices of one zoo's seed pairs."""
    members = common.zoo_members(zoo)
    pairs = common.seed_pairs(sorted(members), args.num_pairs)
    if not pairs:
        raise ValueError(f"{zoo} holds fewer than two trained seeds.")
    arch = zoo.name
    cache: dict[int, dict[str, np.ndarray]] = {}

    def features(seed):
        if seed not in cache:
            model, variables, _ = common.load_member(members[seed])
            cache[seed] = layer_features(model, variables, test_images)
        return cache[seed]

    for (a, b), measure in itertools.product(pairs, args.measures):
        key = {
            "arch": arch,
            "seeds": [a, b],
            "measure": measure,
            "convention": args.convention,
        }
        if store.has(key):
            continue
        start = time.perf_counter()
        fa, fb = features(a), features(b)
        matrix = similarity_matrix(
            fa, fb, get_measure(measure, convention=args.convention)
        )
        store.add(
            {
                **key,
                "layers": list(fa),
                "matrix": matrix.tolist(),
                "seconds": time.perf_counter() - start,
                "num_images": len(test_images),
            }
        )
        log.info(
            "%s seeds %d-%d %s: %.1f s",
            arch,
            a,
            b,
            measure,
            time.perf_counter() - start,
        )


def mean_matrices(records, arch: str, measure: str):
    """Layers and the ``[pairs, La, Lb]`` stack of one architecture's matrices."""
    rows = [r for r in records if r["arch"] == arch and r["measure"] == measure]
    if not rows:
        return None, None
    return rows[0]["layers"], np.array([r["matrix"] for r in rows])


def write_table2(records, out: Path) -> Path:
    """G_ReLU vs orthogonal Procrustes at matching layers, per architecture."""
    path = out / "table2.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "layer", "measure", "mean", "std", "pairs"])
        for arch in sorted({r["arch"] for r in records}):
            for measure in ("grelu_procrustes", "orthogonal_procrustes"):
                layers, stack = mean_matrices(records, arch, measure)
                if stack is None:
                    continue
                diag = np.diagonal(stack, axis1=1, axis2=2)
                for i, layer in enumerate(layers):
                    w.writerow(
                        [
                            arch,
                            layer,
                            measure,
                            f"{diag[:, i].mean():.4f}",
                            f"{diag[:, i].std():.4f}",
                            len(stack),
                        ]
                    )
    return path


def plot_heatmaps(records, out: Path) -> list[Path]:
    """One figure per architecture: the mean matrix of each CKA measure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for arch in sorted({r["arch"] for r in records}):
        panels = [
            m
            for m in ("grelu_cka", "cka_linear", "cka_rbf")
            if mean_matrices(records, arch, m)[1] is not None
        ]
        if not panels:
            continue
        fig, axes = plt.subplots(
            1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False
        )
        for ax, measure in zip(axes[0], panels, strict=True):
            layers, stack = mean_matrices(records, arch, measure)
            im = ax.imshow(
                stack.mean(0), vmin=0, vmax=1, cmap="viridis", origin="lower"
            )
            n = len(stack)
            ax.set_title(f"{LABELS[measure]} ({n} pair{'s' if n > 1 else ''})")
            ticks = range(len(layers))
            short = [
                name.replace("stage", "s").replace(".block", "b") for name in layers
            ]
            ax.set_xticks(ticks, short, rotation=90, fontsize=7)
            ax.set_yticks(ticks, short, fontsize=7)
            ax.set_xlabel("model B layer")
            ax.set_ylabel("model A layer")
            fig.colorbar(im, ax=ax, fraction=0.046)
        fig.suptitle(f"{arch}: similarity of layers across seeds")
        fig.tight_layout()
        path = out / f"figure2_{arch}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv=None) -> dict:
    args = parse_args(argv)
    common.start()
    args.out.mkdir(parents=True, exist_ok=True)
    store = common.RecordStore(
        args.out / "similarity.jsonl",
        key_fields=("arch", "seeds", "measure", "convention"),
    )
    splits = load_cifar10(
        args.data_dir, val_size=0, test_size=args.num_images, seed=args.seed
    )
    for zoo in args.zoo:
        run_architecture(zoo, args, splits.test.images, store)
    records = [r for r in store.records() if r["convention"] == args.convention]
    outputs = {
        "table2": str(write_table2(records, args.out)),
        "figures": [str(p) for p in plot_heatmaps(records, args.out)],
    }
    (args.out / "outputs.json").write_text(json.dumps(outputs, indent=2))
    return outputs


if __name__ == "__main__":
    main()

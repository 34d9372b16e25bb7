"""One command reproduces the paper: zoo, stitching, similarity, rotation penalty,
dissection, and a report.

Usage::

    python -m experiments.reproduce --preset quick [--data-dir DIR] [--out DIR]

Each step is one experiment script called with the preset's arguments; every
script skips the work whose results are already in its output folder, so a rerun
(after an interruption, or with more steps) reuses everything finished. The
report folder (default ``reports/<preset>``) receives:

- ``zoo/``: the trained models (orbax checkpoints, metrics, chosen epochs);
- ``stitching/``, ``similarity/``, ``rotation_penalty/``, ``dissection/``: each
  experiment's tables (CSV/JSON lines) and figures;
- ``REPORT.md``: each paper result next to ours, with the settings used, and
  ``figures/`` with one PNG per paper figure.

Presets: ``smoke`` (CI: checks the pipeline, no claims), ``quick`` (about 15
minutes on 2 CPU cores), ``cpu`` (about 2 hours on 2 CPU cores, half of it the
rotation penalty: wider models, more data and epochs), ``paper`` (the paper's
settings, for GPU/TPU hosts).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import json
import logging
import math
import shutil
import time
from pathlib import Path

from experiments import common

log = logging.getLogger("reproduce")


@dataclasses.dataclass(frozen=True)
class Preset:
    """The scale of every step.

    Attributes:
      myrtle_width: Myrtle CNN width ``c`` of the stitching/similarity zoo.
      resnet_width: ResNet20 width multiplier (similarity heat maps).
      seeds: models per zoo (pairs are drawn among them).
      train_size, val_size, test_size: CIFAR-10 subset sizes (None: all).
      epochs: zoo training epochs.
      recipe: training recipe of the zoo (``symjax.training.recipes``).
      pairs: model pairs for stitching and similarity.
      stitch_epochs: stitching-layer training epochs (G_ReLU: the relaxed stage).
      stitch_finetune: G_ReLU epochs that train ``D`` with ``P`` rounded.
      stitch_train_size: training images of the stitching layers (None: the
        zoo's training split).
      stitch_methods: stitching classes.
      similarity_images: test images on which layers are compared.
      rotation_width, rotation_epochs, rotation_trials, rotation_finetune: the
        rotation-penalty base model (Myrtle without BatchNorm) and its trials.
        The cpu preset's 6 fine-tuning epochs do not finish re-learning a
        transformed convolutional layer: most of its trials choose their last
        epoch, and there the group penalty is still several points above zero.
      dissection_*: models, training and rotations of the dissection.
      rotation_activations: activations of the rotation-penalty base models
        (the paper shows ReLU and sigmoid; a sigmoid Myrtle CNN without
        BatchNorm stayed at chance, 10%, after 3 CPU epochs with either recipe,
        so only the paper preset asks for it).
      rotation_base_lr: learning rate of those base models (None: the
        recipe's; the cpu recipe's 0.1 left a Myrtle CNN without BatchNorm at
        18% after 3 epochs, 0.02 reached 28%).
      rotation_lr: the fine-tuning rates tried by every trial, the (rate,
        epoch) of best validation accuracy being chosen. One rate does not
        suit every layer: where only the dense head is fine-tuned, Adam needs
        a larger rate to re-learn the rescaled inputs within a few epochs than
        where three convolutions are.
      slopes: LeakyReLU negative slopes for the ResNet20 stitching sweep
        (appendix D.3); empty to skip it.
    """

    myrtle_width: int
    resnet_width: float
    seeds: int
    train_size: int | None
    val_size: int
    test_size: int | None
    epochs: int
    recipe: str
    pairs: int
    stitch_epochs: int
    stitch_finetune: int
    stitch_train_size: int | None
    stitch_methods: tuple[str, ...]
    similarity_images: int
    rotation_width: int
    rotation_epochs: int
    rotation_trials: int
    rotation_finetune: int
    dissection_width: float
    dissection_convnext_width: int
    dissection_epochs: int
    dissection_train_size: int
    dissection_images: int
    dissection_rotations: int
    rotation_activations: tuple[str, ...] = ("relu",)
    rotation_base_lr: float | None = None
    rotation_lr: tuple[float, ...] = (1e-3,)
    slopes: tuple[float, ...] = ()


METHODS = ("identity", "full", "g_relu", "low_rank:1", "orthogonal")

PRESETS = {
    "smoke": Preset(
        myrtle_width=4,
        resnet_width=0.25,
        seeds=2,
        train_size=500,
        val_size=200,
        test_size=500,
        epochs=1,
        recipe="cpu",
        pairs=1,
        stitch_epochs=1,
        stitch_finetune=1,
        stitch_train_size=None,
        stitch_methods=("full", "g_relu", "low_rank:1"),
        similarity_images=100,
        rotation_width=4,
        rotation_epochs=1,
        rotation_trials=1,
        rotation_finetune=1,
        dissection_width=0.25,
        dissection_convnext_width=8,
        dissection_epochs=1,
        dissection_train_size=500,
        dissection_images=60,
        dissection_rotations=1,
        rotation_base_lr=0.02,
        rotation_lr=(3e-3, 1e-2),
    ),
    "quick": Preset(
        myrtle_width=8,
        resnet_width=0.25,
        seeds=3,
        train_size=4000,
        val_size=1000,
        test_size=2000,
        epochs=3,
        recipe="cpu",
        pairs=3,
        stitch_epochs=1,
        stitch_finetune=1,
        stitch_train_size=2000,
        stitch_methods=("identity", "full", "g_relu", "low_rank:1"),
        similarity_images=500,
        rotation_width=8,
        rotation_epochs=10,
        rotation_trials=2,
        rotation_finetune=3,
        dissection_width=0.25,
        dissection_convnext_width=8,
        dissection_epochs=2,
        dissection_train_size=3000,
        dissection_images=200,
        dissection_rotations=2,
        rotation_base_lr=0.02,
        rotation_lr=(3e-3, 1e-2),
    ),
    "cpu": Preset(
        myrtle_width=16,
        resnet_width=0.5,
        seeds=3,
        train_size=8000,
        val_size=1000,
        test_size=None,
        epochs=6,
        recipe="cpu",
        pairs=3,
        stitch_epochs=2,
        stitch_finetune=1,
        stitch_train_size=4000,
        stitch_methods=("identity", "full", "g_relu", "low_rank:1"),
        similarity_images=1000,
        rotation_width=16,
        rotation_epochs=30,
        rotation_trials=3,
        rotation_finetune=6,
        dissection_width=0.5,
        dissection_convnext_width=16,
        dissection_epochs=5,
        dissection_train_size=8000,
        dissection_images=500,
        dissection_rotations=3,
        rotation_base_lr=0.02,
        rotation_lr=(3e-3, 1e-2),
    ),
    "paper": Preset(
        myrtle_width=64,
        resnet_width=1.0,
        seeds=16,
        train_size=None,
        val_size=5000,
        test_size=None,
        epochs=50,
        recipe="paper",
        pairs=32,
        stitch_epochs=20,
        stitch_finetune=3,
        stitch_train_size=None,
        stitch_methods=METHODS,
        similarity_images=2000,
        rotation_width=64,
        rotation_epochs=50,
        rotation_trials=5,
        rotation_finetune=10,
        dissection_width=4.0,
        dissection_convnext_width=64,
        dissection_epochs=50,
        dissection_train_size=45000,
        dissection_images=2000,
        dissection_rotations=5,
        rotation_activations=("relu", "sigmoid"),
        rotation_lr=(1e-3, 3e-3),
        slopes=(0.25, 0.5, 0.75, 0.9, 0.99),
    ),
}


def _opt(flag: str, value) -> list[str]:
    return [] if value is None else [flag, str(value)]


def plan(preset: Preset, out: Path, zoo: Path, data: list[str]) -> list[tuple]:
    """The steps ``(name, module, argv)`` of a preset, in order."""
    p = preset
    sizes = [
        *_opt("--train-size", p.train_size),
        "--val-size",
        str(p.val_size),
        *_opt("--test-size", p.test_size),
    ]
    seeds = f"0-{p.seeds - 1}"
    steps = [
        (
            "zoo: Myrtle CNN",
            "experiments.train_zoo",
            [
                "--arch",
                "myrtle",
                "--width",
                str(p.myrtle_width),
                "--seeds",
                seeds,
                "--recipe",
                p.recipe,
                "--epochs",
                str(p.epochs),
                "--name",
                "myrtle",
                "--out",
                str(zoo),
                "--no-progress",
                *sizes,
                *data,
            ],
        ),
        (
            "zoo: ResNet20",
            "experiments.train_zoo",
            [
                "--arch",
                "resnet20",
                "--model-config",
                json.dumps({"width_multiplier": p.resnet_width}),
                "--seeds",
                seeds,
                "--recipe",
                p.recipe,
                "--epochs",
                str(p.epochs),
                "--name",
                "resnet20",
                "--out",
                str(zoo),
                "--no-progress",
                *sizes,
                *data,
            ],
        ),
    ]
    for slope in p.slopes:
        steps.append(
            (
                f"zoo: ResNet20 LeakyReLU({slope})",
                "experiments.train_zoo",
                [
                    "--arch",
                    "resnet20",
                    "--model-config",
                    json.dumps(
                        {
                            "width_multiplier": p.resnet_width,
                            "activation": "leaky_relu",
                            "activation_params": {"negative_slope": slope},
                        }
                    ),
                    "--seeds",
                    "0-1",
                    "--recipe",
                    p.recipe,
                    "--epochs",
                    str(p.epochs),
                    "--name",
                    f"resnet20_leaky{slope}",
                    "--out",
                    str(zoo),
                    "--no-progress",
                    *sizes,
                    *data,
                ],
            )
        )
    stitch_zoos = [str(zoo / "myrtle")]
    if p.slopes:
        stitch_zoos += [str(zoo / "resnet20")]
        stitch_zoos += [str(zoo / f"resnet20_leaky{s}") for s in p.slopes]
    steps += [
        (
            "stitching (Section 4)",
            "experiments.stitch",
            [
                "--zoo",
                *stitch_zoos,
                "--out",
                str(out / "stitching"),
                "--methods",
                *p.stitch_methods,
                "--max-pairs",
                str(p.pairs),
                "--epochs",
                str(p.stitch_epochs),
                "--finetune-epochs",
                str(p.stitch_finetune),
                *_opt("--train-size", p.stitch_train_size),
                *data,
            ],
        ),
        (
            "similarity (Section 5)",
            "experiments.similarity",
            [
                "--zoo",
                str(zoo / "myrtle"),
                str(zoo / "resnet20"),
                "--out",
                str(out / "similarity"),
                "--num-pairs",
                str(p.pairs),
                "--num-images",
                str(p.similarity_images),
                *data,
            ],
        ),
        (
            "rotation penalty (Section 3.3)",
            "experiments.rotation_penalty",
            [
                "--out",
                str(out / "rotation_penalty"),
                "--zoo",
                str(zoo),
                "--width",
                str(p.rotation_width),
                "--base-epochs",
                str(p.rotation_epochs),
                "--base-recipe",
                p.recipe,
                "--trials",
                str(p.rotation_trials),
                "--finetune-epochs",
                str(p.rotation_finetune),
                "--activations",
                *p.rotation_activations,
                *_opt("--base-lr", p.rotation_base_lr),
                "--learning-rate",
                *(str(rate) for rate in p.rotation_lr),
                *sizes,
                *data,
            ],
        ),
        (
            "dissection (Section 6)",
            "experiments.dissection",
            [
                "--out",
                str(out / "dissection"),
                "--zoo",
                str(zoo / "dissection"),
                "--width-multiplier",
                str(p.dissection_width),
                "--convnext-width",
                str(p.dissection_convnext_width),
                "--epochs",
                str(p.dissection_epochs),
                "--train-size",
                str(p.dissection_train_size),
                "--num-images",
                str(p.dissection_images),
                "--num-rotations",
                str(p.dissection_rotations),
                *data,
            ],
        ),
    ]
    return steps


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Reproduce the paper's experiments and write a report."
    )
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="report folder (default: reports/<preset>)",
    )
    p.add_argument(
        "--zoo", type=Path, default=None, help="zoo folder (default: <out>/zoo)"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="CIFAR-10: a TFDS data_dir or a train|test/<class>/*.jpg "
        "tree (default: SYMJAX_DATA_DIR, ../shared/data/cifar10, "
        "or a TFDS download)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="run only the steps whose name starts with these words",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (multi-host)",
    )
    return p.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    common.start()
    if args.distributed:
        import jax

        jax.distributed.initialize()
    preset = PRESETS[args.preset]
    out = args.out or Path("reports") / args.preset
    zoo = args.zoo or out / "zoo"
    out.mkdir(parents=True, exist_ok=True)
    data = _opt("--data-dir", args.data_dir)

    timings = {}
    for name, module, argv_ in plan(preset, out, zoo, data):
        if args.only and not any(name.startswith(w) for w in args.only):
            continue
        print(f"\n=== {name}: python -m {module} {' '.join(argv_)}", flush=True)
        start = time.perf_counter()
        importlib.import_module(module).main(argv_)
        timings[name] = round(time.perf_counter() - start, 1)
        print(f"=== {name}: {timings[name]} s", flush=True)

    report = write_report(out, zoo, args.preset, preset, timings)
    print(f"\nReport: {report}")
    return report


# ---------------------------------------------------------------------------
# The report.


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _cell(value) -> str:
    """A table cell: numbers with four decimals, everything else as it is."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if str(value).lstrip("-").isdigit() or not math.isfinite(number):
        return str(value)
    return f"{number:.4f}"


def _table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "_(no results)_\n"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _zoo_table(zoo: Path) -> list[dict]:
    from symjax.training.zoo import list_zoo

    rows = []
    for member in list_zoo(zoo) + list_zoo(zoo / "dissection"):
        done = json.loads((member / "done.json").read_text())
        row = {"model": member.parent.name, "seed": member.name.removeprefix("seed_")}
        for k in ("best_epoch", "val_accuracy", "test_accuracy"):
            v = done.get(k)
            row[k] = f"{v:.4f}" if isinstance(v, float) else v
        rows.append(row)
    return rows


def _mean(values) -> float:
    return sum(values) / len(values) if values else math.nan


def stitching_findings(rows: list[dict]) -> list[str]:
    """Where the G_ReLU layer falls between the full and the rank-1 layer."""
    lines = []
    for group in sorted({r["group"] for r in rows}):
        pen: dict[str, dict[str, float]] = {}
        for r in rows:
            if r["group"] == group:
                pen.setdefault(r["method"], {})[r["layer"]] = float(r["penalty_pp"])
        means = ", ".join(
            f"{m} {_mean(list(v.values())):.2f}" for m, v in sorted(pen.items())
        )
        line = f"{group}: mean penalty over layers (pp): {means}."
        for low, high, words in (
            ("full", "g_relu", "full <= G_ReLU"),
            ("g_relu", "low_rank:1", "G_ReLU <= rank 1"),
        ):
            if low in pen and high in pen:
                layers = sorted(set(pen[low]) & set(pen[high]))
                below = sum(pen[low][k] <= pen[high][k] for k in layers)
                line += f" {words} at {below} of {len(layers)} layers."
        lines.append(line)
    return lines


def similarity_findings(rows: list[dict]) -> list[str]:
    """Mean matching-layer similarity per architecture and measure."""
    lines = []
    for arch in sorted({r["arch"] for r in rows}):
        by: dict[str, list[float]] = {}
        for r in rows:
            if r["arch"] == arch:
                by.setdefault(r["measure"], []).append(float(r["mean"]))
        lines.append(
            f"{arch}: mean over matching layers: "
            + ", ".join(f"{m} {_mean(v):.3f}" for m, v in sorted(by.items()))
            + "."
        )
    return lines


def rotation_findings(rows: list[dict]) -> list[str]:
    """At how many layers the group penalty is below the orthogonal one, and at
    how many clearly so (their 95% intervals do not overlap)."""
    lines = []
    for act in sorted({r["activation"] for r in rows}):
        pen: dict[str, dict[str, float]] = {}
        ci: dict[str, dict[str, float]] = {}
        for r in rows:
            if r["activation"] == act:
                pen.setdefault(r["kind"], {})[r["layer"]] = 100 * float(r["penalty"])
                ci.setdefault(r["kind"], {})[r["layer"]] = 100 * float(r["ci95"])
        if {"group", "orthogonal"} <= set(pen):
            layers = sorted(set(pen["group"]) & set(pen["orthogonal"]))
            below = sum(pen["group"][k] < pen["orthogonal"][k] for k in layers)
            clearly = sum(
                pen["group"][k] + ci["group"][k]
                < pen["orthogonal"][k] - ci["orthogonal"][k]
                for k in layers
            )
            lines.append(
                f"{act}: group penalty below the orthogonal one at {below} of "
                f"{len(layers)} layers, with non-overlapping 95% intervals at "
                f"{clearly}; mean penalty "
                f"{_mean(list(pen['group'].values())):.2f} pp (group) vs "
                f"{_mean(list(pen['orthogonal'].values())):.2f} pp (orthogonal)."
            )
    return lines


def dissection_findings(rows: list[dict]) -> list[str]:
    """Interpretable units in the own basis against the fully rotated one."""
    lines = []
    metric = next((c for c in (rows[0] if rows else {}) if c.startswith("interp")), "")
    for r0 in rows:
        if float(r0["alpha"]) != 0.0:
            continue
        r1 = next(
            (
                r
                for r in rows
                if (r["model"], r["layer"]) == (r0["model"], r0["layer"])
                and float(r["alpha"]) == 1.0
            ),
            None,
        )
        if r1 is None:
            continue
        lines.append(
            f"{r0['model']} {r0['layer']} ({r0['num_units']} units): {metric} "
            f"{float(r0[metric]):.1f} at alpha 0 -> {float(r1[metric]):.1f} at "
            f"alpha 1; mean best IoU {float(r0['mean_best_iou']):.4f} -> "
            f"{float(r1['mean_best_iou']):.4f}."
        )
    return lines


def _findings(lines: list[str]) -> str:
    if not lines:
        return ""
    return "**Summary of ours:**\n\n" + "".join(f"- {x}\n" for x in lines)


FIGURES = {
    "figure1_stitching.png": "stitching/figure1.png",
    "figure3_dissection.png": "dissection/figure3.png",
    "figure4_rotation_penalty.png": "rotation_penalty/figure4.png",
}


def collect_figures(out: Path) -> list[Path]:
    """Copies each experiment's figures into ``out/figures`` under paper names."""
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    found = []
    sources = dict(FIGURES)
    for p in sorted((out / "similarity").glob("figure2_*.png")):
        arch = p.stem.removeprefix("figure2_")
        number = "2" if arch.startswith("resnet") else "5"
        sources[f"figure{number}_similarity_{arch}.png"] = f"similarity/{p.name}"
    for name, src in sources.items():
        if (out / src).exists():
            shutil.copyfile(out / src, figures / name)
            found.append(figures / name)
    return found


def write_report(
    out: Path, zoo: Path, preset_name: str, preset: Preset, timings: dict
) -> Path:
    """REPORT.md: each paper result next to ours, with the settings used."""
    figures = collect_figures(out)
    stitching = _read_csv(out / "stitching" / "penalties.csv")
    table2 = _read_csv(out / "similarity" / "table2.csv")
    rotation = _read_csv(out / "rotation_penalty" / "rotation_penalty.csv")
    dissection = _read_csv(out / "dissection" / "summary.csv")

    def cols(rows):
        return list(rows[0]) if rows else []

    s = [f"# symjax reproduction report: preset `{preset_name}`\n"]
    s.append(
        "Settings: "
        + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(preset).items())
        + ".\n"
    )
    s.append(
        "Step times of this invocation (s; a step whose results were found "
        "takes about 0): " + ", ".join(f"{k} {v}" for k, v in timings.items()) + ".\n"
        if timings
        else ""
    )
    s.append("## Models\n")
    s.append(
        "Epochs are chosen on a validation split carved from the training "
        "data; test accuracy is only reported.\n"
    )
    zrows = _zoo_table(zoo)
    s.append(
        _table(zrows, ["model", "seed", "best_epoch", "val_accuracy", "test_accuracy"])
    )

    s.append("\n## Stitching (Section 4, Figure 1)\n")
    s.append(
        "**Paper:** stitching CNNs on CIFAR-10 at ReLU layers, a G_ReLU "
        "stitching layer (permutation x positive diagonal) loses little "
        "accuracy, close to a full affine layer, while low-rank layers lose "
        "much more: full <= G_ReLU <= rank-1 in penalty at most layers.\n"
    )
    s.append(
        "**Ours:** stitching penalty (eq. 4.3, percentage points on the test "
        "split) per layer and class, mean with a 95% interval over pairs.\n"
    )
    s.append(_table(stitching, cols(stitching)))
    s.append(_findings(stitching_findings(stitching)))

    s.append("\n## Similarity (Section 5, Table 2, Figures 2 and 5)\n")
    s.append(
        "**Paper:** Table 2 compares G_ReLU-Procrustes with orthogonal "
        "Procrustes similarity of matching layers of Myrtle CNNs trained from "
        "different seeds; Figures 2 and 5 show G_ReLU-CKA and CKA over all "
        "layer pairs of two ResNet20s and two Myrtle CNNs. The G_ReLU measures "
        "are invariant only to the smaller group, so features that agree only "
        "up to a rotation score lower under them. The two Procrustes measures "
        "normalise differently (per channel and per matrix), so their values "
        "are not ordered by construction; compare which layers match best.\n"
    )
    s.append(
        "**Ours** (Table 2: matching layers, mean and standard deviation over pairs):\n"
    )
    s.append(_table(table2, cols(table2)))
    s.append(_findings(similarity_findings(table2)))

    s.append("\n## Rotation penalty (Section 3.3, Figure 4)\n")
    s.append(
        "**Paper:** transforming a layer by a random G_ReLU element costs "
        "almost no accuracy after fine-tuning the later layers, a random "
        "orthogonal transform costs clearly more, at every layer.\n"
    )
    s.append(
        "**Ours** (accuracy before the transform minus accuracy after "
        "fine-tuning, on the test split):\n"
    )
    s.append(_table(rotation, cols(rotation)))
    s.append(_findings(rotation_findings(rotation)))

    s.append("\n## Network dissection of rotated bases (Section 6, Figure 3)\n")
    s.append(
        "**Paper:** the number of interpretable units falls as the basis is "
        "rotated away from the activation basis (alpha from 0 to 1) where a "
        "ReLU acts on the layer, and stays flat where none does (a linear "
        "residual stream).\n"
    )
    s.append("**Ours** (mean over random rotations):\n")
    s.append(_table(dissection, cols(dissection)))
    s.append(_findings(dissection_findings(dissection)))

    s.append("\n## Figures\n")
    for f in figures:
        s.append(f"![{f.stem}](figures/{f.name})\n")

    report = out / "REPORT.md"
    report.write_text("\n".join(s))
    (out / "report.json").write_text(
        json.dumps(
            {
                "preset": preset_name,
                "figures": [str(f) for f in figures],
                "tables": {
                    "stitching": str(out / "stitching" / "penalties.csv"),
                    "similarity": str(out / "similarity" / "table2.csv"),
                    "rotation_penalty": str(
                        out / "rotation_penalty" / "rotation_penalty.csv"
                    ),
                    "dissection": str(out / "dissection" / "summary.csv"),
                },
                "timings": timings,
            },
            indent=1,
        )
    )
    return report


if __name__ == "__main__":
    main()

"""Train the default CNN (params.yaml) and a plain two-conv reference on the same data and machine.

Prints a table (validation and test accuracy, also with horizontal-flip test-time averaging
computed outside the model, seconds per epoch, total training time, FLOPs, parameters) and writes
the `train` section of benchmarks/results/<date>-<machine>.json (harness/results.py), naming each
trained model by the SHA-256 of its saved file (kept, git-ignored, in benchmarks/results/models/)
and its architecture. Needs the prepared data: run `dvc repro prepare` first.

    python benchmarks/train_benchmark.py [--only default|reference] [--epochs N]
    python benchmarks/train_benchmark.py --only default --name stride2 \\
        --set model.conv_blocks.0.strides=2 --set model.conv_blocks.0.pool=null --set train.epochs=16

`--set KEY=VALUE` changes the default's params like `dvc exp run -S` (dotted keys, list indices as
numbers, YAML values) and is validated like params.yaml: this is how candidates for the default
are measured (docs/decisions.md, "Choosing the default architecture"). The reference is never changed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import yaml

from harness.results import RESULTS_DIR, Measurement, architecture, model_entry
from pipeline.core import paths
from pipeline.core.fashion_mnist import IMAGE_SIZE, NUM_CLASSES
from pipeline.core.inference import file_sha256
from pipeline.core.params import (
    ConvBlock,
    DenseLayer,
    ModelParams,
    Params,
    ParamsError,
    PoolParams,
    TrainParams,
    parse_params,
)
from pipeline.reporting.flops import forward_flops
from pipeline.shared.dataset import load_split
from pipeline.shared.keras_runtime import Classifier
from pipeline.shared.machine import cpu_model, cpus
from pipeline.training.fit import fit_model


def reference(train: TrainParams) -> tuple[ModelParams, TrainParams]:
    """The textbook Keras CNN: 32 and 64 3x3 valid convs with max pooling, dense 128, Adam, 10 epochs."""
    block = {
        "kernel_size": 3,
        "strides": 1,
        "padding": "valid",
        "batch_norm": False,
        "activation": "relu",
        "pool": PoolParams(size=2, strides=2),
        "dropout": 0.0,
    }
    model = ModelParams(
        conv_blocks=[ConvBlock(filters=32, **block), ConvBlock(filters=64, **block)],
        dense=[DenseLayer(units=128, dropout=0.0)],
        test_time_flip=False,
    )
    plain = train.model_copy(
        update={
            "epochs": 10,
            "batch_size": 32,
            "optimizer": "adam",
            "learning_rate": 0.001,
            "weight_decay": 0.0,
            "lr_schedule": "constant",
            "warmup_epochs": 0,
            "early_stopping_patience": 10,
            "label_smoothing": 0.0,
            "augmentation": train.augmentation.model_copy(
                update={"horizontal_flip": False, "translate": 0.0}
            ),
        }
    )
    return model, plain


def with_overrides(raw: dict, overrides: list[str]) -> Params:
    """params.yaml's mapping with `a.b.0.c=value` overrides applied (YAML values), validated;
    ParamsError naming the override or the key that is wrong."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ParamsError(f"--set {item}: expected KEY=VALUE")
        *path, last = key.split(".")
        try:
            node = raw
            for part in path:
                node = node[int(part)] if isinstance(node, list) else node[part]
            node[int(last) if isinstance(node, list) else last] = yaml.safe_load(value)
        except (KeyError, IndexError, ValueError, TypeError):
            raise ParamsError(f"--set {item}: params.yaml has no key {key}") from None
    return parse_params(
        raw, f"params.yaml with {' '.join(overrides)}" if overrides else "params.yaml"
    )


def accuracies(model, split) -> tuple[float, float]:
    """Accuracy on a split, and with the average of each image's and its mirror's probabilities."""
    classifier = Classifier(model)
    proba = classifier.predict_proba(split.x)
    mirrored = classifier.predict_proba(np.ascontiguousarray(split.x[:, :, ::-1]))
    plain = float((proba.argmax(1) == split.y).mean())
    flip = float((((proba + mirrored) / 2).argmax(1) == split.y).mean())
    return plain, flip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=paths.PREPARED)
    parser.add_argument("--only", choices=["default", "reference"])
    parser.add_argument("--epochs", type=int, help="override epochs (quick check, not a benchmark)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the default's params (repeatable), like dvc exp run -S",
    )
    parser.add_argument("--name", default="default", help="the changed default's name in the table")
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS_DIR,
        help="directory of the result files (harness/results.py)",
    )
    args = parser.parse_args()
    measurement = Measurement("train")
    try:
        params = with_overrides(yaml.safe_load(Path("params.yaml").read_text()), args.set)
    except ParamsError as err:
        raise SystemExit(f"train_benchmark: {err}") from None
    train, val, test = (
        load_split(args.data / paths.SPLIT_FILES[s]) for s in ("train", "val", "test")
    )
    candidates = {args.name: (params.model, params.train), "reference": reference(params.train)}
    results, models = [], []
    for name, (model_params, train_params) in candidates.items():
        if args.only and (name == "reference") != (args.only == "reference"):
            continue
        if args.epochs:
            train_params = train_params.model_copy(update={"epochs": args.epochs})
        started = time.perf_counter()
        model, history = fit_model(model_params, train_params, train, val)
        seconds = time.perf_counter() - started
        saved = args.results / "models" / f"train-{name}.keras"
        saved.parent.mkdir(parents=True, exist_ok=True)
        model.save(saved)
        changed = f"; --set {' '.join(args.set)}" if args.set and name != "reference" else ""
        source = "the plain two-conv reference" if name == "reference" else "params.yaml" + changed
        size = f"{len(train):,} training images, {len(history)} epochs"
        what = f"{architecture(model_params.model_dump())}; {source}; {size}"
        models.append(model_entry(name, saved, what))
        val_acc, val_flip = accuracies(model, val)
        test_acc, test_flip = accuracies(model, test)
        flops = sum(
            forward_flops(
                IMAGE_SIZE, model_params.conv_blocks, model_params.dense, NUM_CLASSES
            ).values()
        )
        results.append(
            {
                "model": name,
                "val_accuracy": round(val_acc, 4),
                "test_accuracy": round(test_acc, 4),
                "val_accuracy_flip_tta": round(val_flip, 4),
                "test_accuracy_flip_tta": round(test_flip, 4),
                "best_epoch": history.attrs["best_epoch"],
                "epochs": len(history),
                "seconds_per_epoch": round(float(history["epoch_seconds"].mean()), 1),
                "training_seconds": round(seconds, 1),
                "parameters": model.count_params(),
                "mflops_per_image": round(flops / 1e6, 2),
                # forward + backward (~3x forward) on the training images, forward on validation
                "gflops_per_epoch": round(flops * (3 * len(train) + len(val)) / 1e9),
                "overrides": args.set if name != "reference" else [],
            }
        )
    header = (
        f"{'model':<12} {'val':>6} {'test':>6} {'val+f':>6} {'test+f':>6} {'ep':>3} "
        f"{'s/ep':>5} {'train s':>7} {'x ref':>5} {'MFLOP':>6} {'params':>8}"
    )
    print(header)
    ref = next((r["training_seconds"] for r in results if r["model"] == "reference"), None)
    for r in results:
        ratio = f"{r['training_seconds'] / ref:.1f}" if ref else "-"
        print(
            f"{r['model']:<12} {r['val_accuracy']:>6.4f} {r['test_accuracy']:>6.4f} "
            f"{r['val_accuracy_flip_tta']:>6.4f} {r['test_accuracy_flip_tta']:>6.4f} "
            f"{r['epochs']:>3} {r['seconds_per_epoch']:>5.1f} {r['training_seconds']:>7.0f} "
            f"{ratio:>5} {r['mflops_per_image']:>6.1f} {r['parameters']:>8,}"
        )
    print("val+f / test+f: with horizontal-flip test-time averaging (not part of the saved model)")
    machine = {"cpu": cpu_model(), "cpus": cpus()}
    print(f"CPU: {machine['cpu']}, {machine['cpus']} CPUs; {len(train):,} training images")
    figures = {
        "train_samples": len(train),
        "data": str(args.data),
        "train_data_sha256": file_sha256(args.data / paths.SPLIT_FILES["train"]),
        "results": results,
    }
    out = measurement.record(models, figures, args.results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Train the default CNN (params.yaml) and a plain two-conv reference on the same data and machine.

Prints a table (test accuracy, seconds per epoch, total training time, parameter count) and writes
benchmarks/results/train.json. Needs the prepared data: run `dvc repro prepare` first.

    python benchmarks/train_benchmark.py [--only default|reference] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from pipeline.dataset import load_split
from pipeline.evaluate import evaluate_predictions
from pipeline.inference import Classifier
from pipeline.params import ConvBlock, DenseLayer, ModelParams, PoolParams, TrainParams, load_params
from pipeline.train import fit_model


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--only", choices=["default", "reference"])
    parser.add_argument("--epochs", type=int, help="override epochs (quick check, not a benchmark)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train.json"))
    args = parser.parse_args()
    params = load_params()
    train, val, test = (load_split(args.data / f"{s}.npz") for s in ("train", "val", "test"))
    candidates = {"default": (params.model, params.train), "reference": reference(params.train)}
    results = []
    for name, (model_params, train_params) in candidates.items():
        if args.only and name != args.only:
            continue
        if args.epochs:
            train_params = train_params.model_copy(update={"epochs": args.epochs})
        started = time.perf_counter()
        model, history = fit_model(model_params, train_params, train, val)
        seconds = time.perf_counter() - started
        metrics = evaluate_predictions(test.y, Classifier(model).predict_proba(test.x)).metrics
        results.append(
            {
                "model": name,
                "test_accuracy": round(metrics["test_accuracy"], 4),
                "epochs": len(history),
                "seconds_per_epoch": round(float(history["epoch_seconds"].mean()), 1),
                "training_seconds": round(seconds, 1),
                "parameters": model.count_params(),
            }
        )
    header = (
        f"{'model':<10} {'test acc':>8} {'epochs':>6} {'s/epoch':>8} {'train s':>8} {'params':>9}"
    )
    print(header)
    for r in results:
        print(
            f"{r['model']:<10} {r['test_accuracy']:>8.4f} {r['epochs']:>6} {r['seconds_per_epoch']:>8.1f} "
            f"{r['training_seconds']:>8.0f} {r['parameters']:>9,}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}
    args.out.write_text(
        json.dumps({"machine": machine, "train_samples": len(train), "results": results}, indent=2)
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Stage `evaluate`: score the trained model on the test split and the feedback slice, and explain
what it learned.

Writes metrics JSON (for `dvc metrics`), per-class and confusion CSVs (for `dvc plots`), per-image
predictions (checked again by `register`), the layer shape table, and figures; logs everything to
the MLflow run that trained the model, after checking that the file it scored is the one that run
logged (same SHA-256). The model is called through pipeline/core/inference.py, as the service calls it.

The feedback slice (data/prepared/feedback.npz: corrections people sent, held out of training by
`prepare`) gives `feedback_accuracy` (null when the slice is empty) and `feedback_samples`; the
slice is logged as the run's `feedback` dataset input, tagged with the digest of the curated
feedback dataset it was cut from.
"""

from __future__ import annotations

import pipeline.training.quiet_tensorflow  # noqa: F401 (first: it filters TensorFlow's start-up log)

# isort: split

import argparse
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, f1_score, log_loss, precision_recall_fscore_support

from pipeline.core import paths
from pipeline.core.architecture import layer_table
from pipeline.core.fashion_mnist import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES
from pipeline.core.inference import CHUNK, file_sha256
from pipeline.core.params import ModelParams, load_params
from pipeline.reporting.figures import (
    confusion_figure,
    feature_maps_figure,
    filters_figure,
    mistakes_figure,
)
from pipeline.shared.dataset import Split, content_hash, load_arrays, load_split
from pipeline.shared.keras_runtime import Classifier
from pipeline.shared.progress import Progress, duration
from pipeline.shared.tracking import (
    DIGEST_CHARS,
    TrackingUnavailable,
    log_split,
    tracking_access,
    use_experiment,
)
from pipeline.training.model import network, spatial_sizes


@dataclass
class Evaluation:
    metrics: dict[str, float | int | None]
    per_class: pd.DataFrame
    confusion: np.ndarray
    predictions: pd.DataFrame


def evaluate_predictions(y_true: np.ndarray, proba: np.ndarray) -> Evaluation:
    """Metrics and tables from true labels and predicted probabilities (pure: no model needed)."""
    labels = list(range(NUM_CLASSES))
    pred = proba.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, pred, labels=labels, zero_division=0
    )
    per_class = pd.DataFrame(
        {
            "class": CLASS_NAMES,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support,
        }
    )
    metrics = {
        "test_accuracy": float((pred == y_true).mean()),
        "test_loss": float(log_loss(y_true, proba, labels=labels)),
        "test_macro_f1": float(
            f1_score(y_true, pred, labels=labels, average="macro", zero_division=0)
        ),
        "test_samples": len(y_true),
    }
    predictions = pd.DataFrame(
        {
            "actual": [CLASS_NAMES[i] for i in y_true],
            "predicted": [CLASS_NAMES[i] for i in pred],
            "predicted_id": pred,
            "confidence": proba[np.arange(len(pred)), pred],
        }
    )
    return Evaluation(
        metrics, per_class, confusion_matrix(y_true, pred, labels=labels), predictions
    )


def layer_frame(model: keras.Model, params: ModelParams) -> pd.DataFrame:
    """The layer shape table, with the size Keras actually produced beside the formula's."""
    frame = pd.DataFrame([r.as_dict() for r in layer_table(IMAGE_SIZE, params.conv_blocks)])
    frame["keras_out"] = frame["layer"].map(spatial_sizes(model))
    if not (frame["keras_out"] == frame["n_out"]).all():
        raise AssertionError(f"layer table disagrees with Keras:\n{frame}")
    return frame


def first_layer_views(model: keras.Model, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First conv layer's kernels and its activations (after the activation function) on `image`."""
    net = network(model)
    conv = net.get_layer("conv_0")
    act = net.get_layer("act_0")
    probe = keras.Model(net.inputs[0], act.output)
    maps = keras.ops.convert_to_numpy(probe(image[None], training=False))[0]
    return keras.ops.convert_to_numpy(conv.kernel), maps


def feedback_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float | int | None]:
    """Accuracy on the feedback slice (None when it is empty: no number rather than a made-up one)."""
    accuracy = float((proba.argmax(axis=1) == y_true).mean()) if len(y_true) else None
    return {"feedback_accuracy": accuracy, "feedback_samples": len(y_true)}


def score(classifier: Classifier, images: np.ndarray, what: str = "test") -> np.ndarray:
    """Class probabilities of a whole split, showing progress (10,000 images take seconds)."""
    progress = Progress(len(images), f"scoring the {what} split", unit="images")
    chunks = []
    for start in range(0, len(images), CHUNK):
        chunks.append(classifier.predict_proba(images[start : start + CHUNK]))
        progress.update(start + len(chunks[-1]))
    progress.finish(f"scored {len(images):,} {what} images in {duration(progress.elapsed)}")
    return np.concatenate(chunks) if chunks else classifier.predict_proba(images)


def write_reports(
    classifier: Classifier, params: ModelParams, test: Split, out: Path, feedback: Split
) -> Evaluation:
    """Evaluate on `test` and the feedback slice, and write every report file under `out`."""
    model = classifier.model
    proba = score(classifier, test.x)
    result = evaluate_predictions(test.y, proba)
    # An empty slice is not scored (nothing to say); its metrics say so (None, 0 samples).
    feedback_proba = score(classifier, feedback.x, "feedback") if len(feedback) else proba[:0]
    result.metrics.update(feedback_metrics(feedback.y, feedback_proba))
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2) + "\n")
    result.per_class.to_csv(out / "per_class.csv", index=False, float_format="%.4f")
    result.predictions[["actual", "predicted"]].to_csv(out / "confusion.csv", index=False)
    result.predictions.to_csv(out / "predictions.csv", index_label="index", float_format="%.6f")
    layer_frame(model, params).to_csv(out / "layers.csv", index=False)
    kernels, maps = first_layer_views(model, test.x[0])
    confusion_figure(result.confusion).savefig(figures / "confusion_matrix.png", dpi=110)
    mistakes_figure(test.x, test.y, proba).savefig(figures / "confident_mistakes.png", dpi=110)
    filters_figure(kernels).savefig(figures / "conv_filters.png", dpi=110)
    title = f"First conv layer's feature maps for one test image ({CLASS_NAMES[test.y[0]]})"
    feature_maps_figure(test.x[0], maps, title).savefig(figures / "feature_maps.png", dpi=110)
    return result


def log_feedback_input(split: Split, arrays: dict[str, np.ndarray], path: Path) -> None:
    """The feedback slice as the active run's `feedback` dataset input: digest of its arrays; tags:
    the digest of the curated feedback dataset it was cut from and how many of that dataset's
    images went into training. Nothing when the dataset had no accepted correction at all."""
    train_images = int(arrays["train_images"])
    if len(split) == 0 and train_images == 0:
        return
    with warnings.catch_warnings():
        # As in tracking.log_split: MLflow warns that a local path has two URI schemes.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = mlflow.data.from_numpy(
            np.ascontiguousarray(split.x),
            targets=np.ascontiguousarray(split.y),
            source=str(path.resolve()),
            name="fashion-mnist-feedback",
            digest=content_hash(split)[:DIGEST_CHARS],
        )
    tags = {
        "feedback_dataset_digest": str(arrays["dataset_digest"]),
        "feedback_train_images": str(train_images),
        "feedback_slice_images": str(len(split)),
    }
    mlflow.log_input(dataset, context="feedback", tags=tags)
    if len(split):
        # register's candidates when the slice is not empty: the runs scored on this very slice.
        mlflow.set_tag("feedback_data_hash", content_hash(split))


class ModelMismatch(RuntimeError):
    """The model file is not the one the training run logged."""


def check_model_file(model_file: Path, run: mlflow.entities.Run) -> str:
    """The file's SHA-256, which must be the one the training run recorded."""
    expected = run.data.tags.get("model_sha256")
    actual = file_sha256(model_file)
    if actual != expected:
        raise ModelMismatch(
            f"{model_file} (sha256 {actual[:12]}) is not the model MLflow run {run.info.run_id} "
            f"logged (sha256 {str(expected)[:12]}); rerun `dvc repro train`"
        )
    return actual


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=paths.PARAMS)
    parser.add_argument("--model", type=Path, default=paths.MODEL)
    parser.add_argument("--data", type=Path, default=paths.PREPARED, help="prepared .npz splits")
    parser.add_argument(
        "--sources", type=Path, default=paths.SOURCES, help="fetch's sources.json (provenance)"
    )
    parser.add_argument("--run", type=Path, default=paths.TRAIN_RUN, help="train's run.json")
    parser.add_argument("--out", type=Path, default=paths.EVAL_REPORTS, help="reports directory")
    args = parser.parse_args()
    params = load_params(args.params)
    run_id = json.loads(args.run.read_text())["mlflow_run_id"]
    try:
        with tracking_access():
            use_experiment(params.mlflow.experiment_name)
            check_model_file(args.model, mlflow.MlflowClient().get_run(run_id))
    except (ModelMismatch, TrackingUnavailable) as err:
        sys.exit(f"evaluate failed: {err}")
    test = load_split(args.data / paths.SPLIT_FILES["test"])
    feedback = load_arrays(args.data / paths.FEEDBACK_SLICE)
    feedback_split = Split(feedback["x"], feedback["y"].astype(np.int64))
    result = write_reports(
        Classifier.from_file(args.model), params.model, test, args.out, feedback_split
    )
    with mlflow.start_run(run_id=run_id):
        log_split(test, "test", "test", json.loads(args.sources.read_text()))
        log_feedback_input(feedback_split, feedback, args.data / paths.FEEDBACK_SLICE)
        # MLflow metrics are numbers: an empty slice's accuracy (None) is left out.
        mlflow.log_metrics({k: float(v) for k, v in result.metrics.items() if v is not None})
        mlflow.log_artifacts(str(args.out), artifact_path="evaluation")
    print(json.dumps(result.metrics, indent=2))
    print(result.per_class.to_string(index=False, float_format="%.3f"))


if __name__ == "__main__":
    main()

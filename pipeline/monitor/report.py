"""The drift report of one window: its records against the reference, as one typed value.

What is compared with what: the inputs (pipeline/core/prediction_log.py's four summaries) with the
same summaries of the training images; the outputs (the confidence and the predicted class) with
the served model's own answers on the validation split: what the model says on data like its
training data, which it never trained on. Its class mix, not the labels', is the reference, so a
model that under-predicts a class does not look like drift, and its confidence there is not
inflated by having seen the images. The tests and the rule: statistics.py.

`DriftReport.summary()` is drift.json (DVC reads it as metrics), in a fixed key order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.core.params import MonitorParams
from pipeline.core.prediction_log import INPUT_FEATURES, image_features
from pipeline.monitor.statistics import FeatureDrift, Outputs, Verdict, compare, verdict, what_moved

# (model tag, images) -> that model's answers on them: the reference outputs
OutputsOf = Callable[[str, np.ndarray], Outputs]


@dataclass(frozen=True)
class ServedModel:
    """The model whose answers are compared (the one that served most records, unless named)."""

    bento_model: str | None
    model_version: str | None
    records: int  # records it answered in the window
    other_models_records: int  # records of other models: in the input tests only


@dataclass(frozen=True)
class LowConfidenceShare:
    """Share of answers below serve.monitoring.low_confidence, on the reference and in the window."""

    threshold: float
    reference: float
    current: float


@dataclass(frozen=True)
class Sources:
    """Where the window's records and the reference came from (what the command read)."""

    since: str
    until: str
    records_dir: str
    unreadable_lines: int  # record lines that could not be used (cut short by a crash, say)
    reference_inputs: str  # in words: the training split's file and size
    reference_outputs: str  # in words: whose answers on which images

    def summary(self) -> dict[str, Any]:
        return {
            "window": {"since": self.since, "until": self.until},
            "records_dir": self.records_dir,
            "unreadable_lines": self.unreadable_lines,
            "reference": {"inputs": self.reference_inputs, "outputs": self.reference_outputs},
        }


@dataclass(frozen=True)
class Compared:
    """The values each numeric feature's test compared, by feature name (for the histograms)."""

    reference: dict[str, np.ndarray]
    current: dict[str, np.ndarray]


@dataclass(frozen=True)
class DriftReport:
    """A window's report: the verdict, what it rests on, and the values behind the figures."""

    verdict: Verdict
    thresholds: MonitorParams
    records: int
    endpoints: dict[str, int]  # records per endpoint
    model: ServedModel
    classify_inverted_share: float | None  # /classify uploads inverted; None without any
    low_confidence_share: LowConfidenceShare | None  # None without reference outputs
    features: dict[str, FeatureDrift]  # empty without a verdict
    compared: Compared | None  # None without a verdict
    sources: Sources | None = None

    @property
    def drifted(self) -> bool | None:
        """True or False; None when there is no verdict (too few records)."""
        return None if self.verdict == "insufficient data" else self.verdict == "drifted"

    @property
    def drifted_features(self) -> list[str]:
        return [name for name, f in self.features.items() if f.drifted]

    @property
    def what_moved(self) -> list[str]:
        """One line per feature for a person (statistics.what_moved)."""
        return [what_moved(name, f) for name, f in self.features.items()]

    def summary(self) -> dict[str, Any]:
        """drift.json: the verdict first, then where from, the thresholds, the numbers."""
        low = self.low_confidence_share
        return {
            "verdict": self.verdict,
            "drifted": self.drifted,
            "drifted_features": self.drifted_features,
            **(self.sources.summary() if self.sources else {}),
            "thresholds": self.thresholds.model_dump(),
            "records": self.records,
            "endpoints": self.endpoints,
            "model": asdict(self.model),
            "classify_inverted_share": self.classify_inverted_share,
            **({"low_confidence_share": asdict(low)} if low else {}),
            "features": {name: asdict(f) for name, f in self.features.items()},
            "what_moved": self.what_moved,
        }


def served_model(records: list[dict], tag: str | None) -> ServedModel:
    """The model `tag`, or the one that served most records, and how many records each side has."""
    models = Counter(r["bento_model"] for r in records)
    tag = tag or (models.most_common(1)[0][0] if models else None)
    return ServedModel(
        bento_model=tag,
        model_version=next((r["model_version"] for r in records if r["bento_model"] == tag), None),
        records=models.get(tag, 0),
        other_models_records=len(records) - models.get(tag, 0),
    )


def build_report(
    records: list[dict],
    train_images: np.ndarray,
    val_images: np.ndarray,
    thresholds: MonitorParams,
    low_confidence: float,
    outputs_of: OutputsOf,
    model: str | None = None,
    sources: Sources | None = None,
) -> DriftReport:
    """The report of a window's records (pipeline/core/prediction_log.py's read_records).

    outputs_of(model tag, val_images) gives the reference outputs; it is called only when there
    are enough records and some of them are the model's. `model`: the tag whose answers are
    compared (default: the one that served most records).
    """
    served = served_model(records, model)
    classify = [r["inverted"] for r in records if r["endpoint"] == "classify"]
    features: dict[str, FeatureDrift] = {}
    compared, low = None, None
    if len(records) >= thresholds.min_records:
        current = {n: np.array([r[n] for r in records], dtype=np.float64) for n in INPUT_FEATURES}
        reference = image_features(train_images)
        own = [r for r in records if r["bento_model"] == served.bento_model]  # one model's answers
        ref_out = outputs_of(served.bento_model, val_images) if own else None
        cur_out = Outputs(
            class_ids=np.array([r["class_id"] for r in own], dtype=np.int64),
            confidences=np.array([r["confidence"] for r in own], dtype=np.float64),
        )
        features = compare(reference, current, ref_out, cur_out, thresholds)
        if ref_out is not None:
            reference["confidence"] = ref_out.confidences
            current["confidence"] = cur_out.confidences
            low = LowConfidenceShare(
                threshold=low_confidence,
                reference=float(np.mean(ref_out.confidences < low_confidence)),
                current=float(np.mean(cur_out.confidences < low_confidence)),
            )
        compared = Compared(reference=reference, current=current)
    return DriftReport(
        verdict=verdict(features, len(records), thresholds.min_records),
        thresholds=thresholds,
        records=len(records),
        endpoints=dict(Counter(r["endpoint"] for r in records)),
        model=served,
        classify_inverted_share=float(np.mean(classify)) if classify else None,
        low_confidence_share=low,
        features=features,
        compared=compared,
        sources=sources,
    )

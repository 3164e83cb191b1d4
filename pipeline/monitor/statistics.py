"""The drift tests and the project's rule: pure functions of arrays, no files.

Numbers are compared with the two-sample Kolmogorov-Smirnov test, the predicted class with a
chi-squared test of the two class counts. A feature has drifted when the test rejects "same
distribution" (p < monitor.p_value) AND the distributions are at least monitor.min_distance apart
(the KS statistic; the total variation distance for the class), so that neither a small window's
noise nor a trivial shift seen in a huge window raises the alarm. The window has drifted when any
feature has; fewer than monitor.min_records records: no verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import stats

from pipeline.core.fashion_mnist import CLASS_NAMES
from pipeline.core.params import MonitorParams
from pipeline.core.prediction_log import INPUT_FEATURES

Verdict = Literal["drifted", "not drifted", "insufficient data"]


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's comparison: the test, how far apart, and whether that counts as drift."""

    kind: str  # "input" or "output"
    test: str  # "ks" (Kolmogorov-Smirnov) or "chi2"
    statistic: float  # the test's statistic (KS: the largest gap between the two CDFs)
    distance: float  # KS statistic, or total variation distance of the class shares (0-1)
    p_value: float
    drifted: bool
    # numbers: mean, p05, median, p95; the class: each class's share of the answers
    reference: dict[str, float] = field(default_factory=dict)
    current: dict[str, float] = field(default_factory=dict)


def is_drift(p_value: float, distance: float, thresholds: MonitorParams) -> bool:
    """The rule: significant (p < monitor.p_value) and large enough (>= monitor.min_distance)."""
    return p_value < thresholds.p_value and distance >= thresholds.min_distance


def _describe(values: np.ndarray) -> dict[str, float]:
    q05, q50, q95 = np.quantile(values, [0.05, 0.5, 0.95])
    return {
        "mean": float(values.mean()),
        "p05": float(q05),
        "median": float(q50),
        "p95": float(q95),
    }


def numeric_drift(
    reference: np.ndarray, current: np.ndarray, thresholds: MonitorParams, kind: str = "input"
) -> FeatureDrift:
    """Two-sample Kolmogorov-Smirnov test of one numeric feature."""
    result = stats.ks_2samp(reference, current)
    d, p = float(result.statistic), float(result.pvalue)
    return FeatureDrift(
        kind=kind,
        test="ks",
        statistic=d,
        distance=d,
        p_value=p,
        drifted=is_drift(p, d, thresholds),
        reference=_describe(reference),
        current=_describe(current),
    )


def class_drift(
    reference_ids: np.ndarray, current_ids: np.ndarray, thresholds: MonitorParams
) -> FeatureDrift:
    """Chi-squared test of the predicted-class counts (reference vs current)."""
    k = len(CLASS_NAMES)
    table = np.stack(
        [np.bincount(reference_ids, minlength=k), np.bincount(current_ids, minlength=k)]
    )
    shares = table / table.sum(axis=1, keepdims=True)
    used = table.sum(axis=0) > 0  # a class neither side predicted carries no information
    if used.sum() >= 2:
        chi2, p, _, _ = stats.chi2_contingency(table[:, used])
    else:
        chi2, p = 0.0, 1.0
    tvd = float(0.5 * np.abs(shares[0] - shares[1]).sum())
    return FeatureDrift(
        kind="output",
        test="chi2",
        statistic=float(chi2),
        distance=tvd,
        p_value=float(p),
        drifted=is_drift(float(p), tvd, thresholds),
        reference={name: float(s) for name, s in zip(CLASS_NAMES, shares[0], strict=True)},
        current={name: float(s) for name, s in zip(CLASS_NAMES, shares[1], strict=True)},
    )


@dataclass(frozen=True)
class Outputs:
    """A model's answers: one class id and one confidence per image."""

    class_ids: np.ndarray  # int64
    confidences: np.ndarray  # float64


def compare(
    reference_inputs: dict[str, np.ndarray],
    current_inputs: dict[str, np.ndarray],
    reference_outputs: Outputs | None,
    current_outputs: Outputs | None,
    thresholds: MonitorParams,
) -> dict[str, FeatureDrift]:
    """Every feature's comparison, by name: the inputs, then (unless either side is None) the
    confidence and the predicted class."""
    result = {
        name: numeric_drift(reference_inputs[name], current_inputs[name], thresholds)
        for name in INPUT_FEATURES
    }
    if reference_outputs is not None and current_outputs is not None:
        result["confidence"] = numeric_drift(
            reference_outputs.confidences, current_outputs.confidences, thresholds, kind="output"
        )
        result["predicted_class"] = class_drift(
            reference_outputs.class_ids, current_outputs.class_ids, thresholds
        )
    return result


def what_moved(name: str, feature: FeatureDrift) -> str:
    """One line for a person: how the feature moved (the largest class change for the class)."""
    if feature.test == "chi2":
        moved = max(feature.current, key=lambda c: abs(feature.current[c] - feature.reference[c]))
        change = f"{moved} {feature.reference[moved]:.1%} -> {feature.current[moved]:.1%}"
    else:
        change = (
            f"median {feature.reference['median']:.3g} -> {feature.current['median']:.3g}, "
            f"mean {feature.reference['mean']:.3g} -> {feature.current['mean']:.3g}"
        )
    return (
        f"{name}: {change} (distance {feature.distance:.3f}, p = {feature.p_value:.2g}, "
        f"{'DRIFTED' if feature.drifted else 'ok'})"
    )


def verdict(features: dict[str, FeatureDrift], records: int, min_records: int) -> Verdict:
    """ "drifted", "not drifted", or "insufficient data" (fewer than min_records records)."""
    if records < min_records:
        return "insufficient data"
    return "drifted" if any(f.drifted for f in features.values()) else "not drifted"

"""Drift report (`make monitor`): the predictions the service recorded, against the training data.

Reads the prediction records of a time window (pipeline/core/prediction_log.py) and compares, feature
by feature, what the service saw with what the model was trained on:
- the inputs (pixel mean, pixel std, share of bright pixels, log2 aspect of the object) with the
  same summaries of the training images (data/prepared/train.npz);
- the outputs (the confidence and the predicted class) with the served model's own answers on
  the validation split (data/prepared/val.npz): what the model says on data like its training
  data, which it never trained on. Its class mix, not the labels', is the reference, so a model
  that under-predicts a class does not look like drift, and its confidence there is not inflated
  by having seen the images.
Numbers are compared with the two-sample Kolmogorov-Smirnov test, the predicted class with a
chi-squared test of the two class counts. A feature has drifted when the test rejects "same
distribution" (p < monitor.p_value) AND the distributions are at least monitor.min_distance
apart (the KS statistic; the total variation distance for the class), so that neither a small
window's noise nor a trivial shift seen in a huge window raises the alarm. The window has drifted
when any feature has. Fewer than monitor.min_records records: no verdict.

Writes <out>/drift.json (a summary DVC reads as metrics: `dvc metrics show reports/monitor/drift.json`)
and <out>/drift.html (the same with histograms, for a person).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import io
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from pipeline.core.fashion_mnist import CLASS_NAMES
from pipeline.core.params import MonitorParams, load_params
from pipeline.core.prediction_log import INPUT_FEATURES, format_time, image_features, parse_time
from pipeline.core.prediction_log import read_records as read_prediction_records
from pipeline.shared.dataset import load_split, write_atomically

OUTPUT_FEATURES = ("confidence", "predicted_class")


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's comparison: the test, how far apart, and whether that counts as drift."""

    kind: str  # "input" or "output"
    test: str  # "ks" (Kolmogorov-Smirnov) or "chi2"
    statistic: float  # the test's statistic (KS: the largest gap between the two CDFs)
    distance: float  # KS statistic, or total variation distance of the class shares (0-1)
    p_value: float
    drifted: bool
    reference: dict = field(default_factory=dict)  # mean/quantiles, or the class shares
    current: dict = field(default_factory=dict)


def _describe(values: np.ndarray) -> dict:
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
        drifted=p < thresholds.p_value and d >= thresholds.min_distance,
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
        drifted=float(p) < thresholds.p_value and tvd >= thresholds.min_distance,
        reference={name: float(s) for name, s in zip(CLASS_NAMES, shares[0], strict=True)},
        current={name: float(s) for name, s in zip(CLASS_NAMES, shares[1], strict=True)},
    )


def compare(
    reference_inputs: dict[str, np.ndarray],
    current_inputs: dict[str, np.ndarray],
    reference_outputs: tuple[np.ndarray, np.ndarray] | None,
    current_outputs: tuple[np.ndarray, np.ndarray] | None,
    thresholds: MonitorParams,
) -> dict[str, FeatureDrift]:
    """Every feature's comparison; outputs are (class ids, confidences), None to skip them."""
    result = {
        name: numeric_drift(reference_inputs[name], current_inputs[name], thresholds)
        for name in INPUT_FEATURES
    }
    if reference_outputs is not None and current_outputs is not None:
        (ref_ids, ref_conf), (cur_ids, cur_conf) = reference_outputs, current_outputs
        result["confidence"] = numeric_drift(ref_conf, cur_conf, thresholds, kind="output")
        result["predicted_class"] = class_drift(ref_ids, cur_ids, thresholds)
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


def verdict(features: dict[str, FeatureDrift], records: int, min_records: int) -> str:
    """ "drifted", "not drifted", or "insufficient data" (fewer than min_records records)."""
    if records < min_records:
        return "insufficient data"
    return "drifted" if any(f.drifted for f in features.values()) else "not drifted"


# ---------------------------------------------------------------------------------------------
# The command: records and reference data in, drift.json and drift.html out.


def parse_when(text: str, now: dt.datetime) -> dt.datetime:
    """An ISO 8601 time (UTC unless it says otherwise), or a duration before now: 30m, 24h, 7d."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([mhd])", text.strip())
    if match:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
        return now - dt.timedelta(**{unit: float(match.group(1))})
    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected an ISO time (2026-11-26T09:00) or a duration (30m, 24h, 7d)"
        ) from None


def served_model_outputs(tag: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class ids, confidences) of the BentoML store's model `tag` (its ONNX export, as served)."""
    import bentoml

    from pipeline.core.inference import OnnxClassifier

    try:
        model = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        home = os.environ.get("BENTOML_HOME", "~/bentoml")
        sys.exit(
            f"drift report: the served model {tag} is not in the BentoML store ({home}); set "
            "BENTOML_HOME to the serving machine's store, or pass --model <tag> "
            "(`python -m pipeline.register --import-only` imports the current champion)"
        )
    proba = OnnxClassifier(model.path_of(model.info.metadata["onnx_file"])).predict_proba(images)
    return proba.argmax(axis=1), proba.max(axis=1).astype(np.float64)


def build_report(
    records: list[dict],
    train_images: np.ndarray,
    val_images: np.ndarray,
    thresholds: MonitorParams,
    low_confidence: float,
    model: str | None = None,
    outputs_of: Callable[[str, np.ndarray], tuple[np.ndarray, np.ndarray]] = served_model_outputs,
    context: dict | None = None,
) -> tuple[dict, dict[str, FeatureDrift], dict]:
    """(summary, features, the arrays compared for the figures) of a window's records.

    outputs_of(model tag, images) -> (class ids, confidences) gives the reference outputs;
    `context` (window, data paths) goes into the summary as it is.
    """
    models = Counter(r["bento_model"] for r in records)
    model = model or (models.most_common(1)[0][0] if models else None)
    summary: dict = {
        "records": len(records),
        "endpoints": dict(Counter(r["endpoint"] for r in records)),
        "model": {
            "bento_model": model,
            "model_version": next(
                (r["model_version"] for r in records if r["bento_model"] == model), None
            ),
            "records": models.get(model, 0),
            "other_models_records": len(records) - models.get(model, 0),
        },
    }
    classify = [r["inverted"] for r in records if r["endpoint"] == "classify"]
    summary["classify_inverted_share"] = float(np.mean(classify)) if classify else None
    features: dict[str, FeatureDrift] = {}
    arrays: dict = {}
    if len(records) >= thresholds.min_records:
        current = {n: np.array([r[n] for r in records], dtype=np.float64) for n in INPUT_FEATURES}
        reference = image_features(train_images)
        own = [r for r in records if r["bento_model"] == model]  # outputs: one model's answers
        ref_out = outputs_of(model, val_images) if own else None
        cur_out = (
            np.array([r["class_id"] for r in own], dtype=np.int64),
            np.array([r["confidence"] for r in own], dtype=np.float64),
        )
        features = compare(reference, current, ref_out, cur_out, thresholds)
        arrays = {"reference": reference, "current": current}
        if ref_out is not None:
            arrays["reference"]["confidence"], arrays["current"]["confidence"] = (
                ref_out[1],
                cur_out[1],
            )
            summary["low_confidence_share"] = {
                "threshold": low_confidence,
                "reference": float(np.mean(ref_out[1] < low_confidence)),
                "current": float(np.mean(cur_out[1] < low_confidence)),
            }
    result = verdict(features, len(records), thresholds.min_records)
    summary = {
        "verdict": result,
        "drifted": None if result == "insufficient data" else result == "drifted",
        "drifted_features": [name for name, f in features.items() if f.drifted],
        **(context or {}),
        "thresholds": thresholds.model_dump(),
        **summary,
        "features": {name: asdict(f) for name, f in features.items()},
        "what_moved": [what_moved(name, f) for name, f in features.items()],
    }
    return summary, features, arrays


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode()


def figures_html(features: dict[str, FeatureDrift], arrays: dict) -> str:
    """Histograms of each numeric feature and the class shares, reference vs current, as <img>."""
    from matplotlib.figure import Figure

    numeric = [n for n, f in features.items() if f.test == "ks"]
    fig = Figure(figsize=(4 * len(numeric), 3.2), layout="constrained")
    for ax, name in zip(fig.subplots(1, len(numeric)), numeric, strict=True):
        ref, cur = arrays["reference"][name], arrays["current"][name]
        bins = np.histogram_bin_edges(np.concatenate([ref, cur]), bins=30)
        ax.hist(ref, bins=bins, density=True, alpha=0.5, label="reference")
        ax.hist(cur, bins=bins, density=True, alpha=0.5, label="current")
        ax.set_title(f"{name}{' (DRIFTED)' if features[name].drifted else ''}", fontsize=10)
        ax.legend(fontsize=8)
    parts = [f'<img alt="feature histograms" src="data:image/png;base64,{_png(fig)}">']
    if "predicted_class" in features:
        shares = features["predicted_class"]
        fig = Figure(figsize=(9, 3.5), layout="constrained")
        ax = fig.subplots()
        x = np.arange(len(CLASS_NAMES))
        ax.bar(x - 0.2, [shares.reference[c] for c in CLASS_NAMES], 0.4, label="reference")
        ax.bar(x + 0.2, [shares.current[c] for c in CLASS_NAMES], 0.4, label="current")
        ax.set_xticks(x, CLASS_NAMES, rotation=30, ha="right")
        ax.set_ylabel("share of predictions")
        ax.set_title("predicted class")
        ax.legend()
        parts.append(f'<img alt="predicted class shares" src="data:image/png;base64,{_png(fig)}">')
    return "\n".join(parts)


def extras(summary: dict) -> str:
    """The numbers beside the tests: low-confidence share, inverted uploads, skipped records."""
    parts = []
    if low := summary.get("low_confidence_share"):
        parts.append(
            f"Answers with confidence below {low['threshold']}: {low['current']:.1%} "
            f"(reference {low['reference']:.1%})."
        )
    if summary.get("classify_inverted_share") is not None:
        parts.append(
            f"/classify uploads inverted (light background): {summary['classify_inverted_share']:.1%}."
        )
    if summary["model"]["other_models_records"]:
        parts.append(
            f"{summary['model']['other_models_records']} records of other models are in the input "
            "tests only."
        )
    if summary.get("unreadable_lines"):
        parts.append(f"{summary['unreadable_lines']} unreadable record lines were skipped.")
    parts.append(
        'What to do with a verdict: docs/monitoring.md, "From a drift verdict to retraining".'
    )
    return " ".join(parts)


def render_html(summary: dict, features: dict[str, FeatureDrift], arrays: dict) -> str:
    """A self-contained HTML page: verdict, window, the feature table, the figures."""
    e = html.escape
    colour = {"drifted": "#b00020", "not drifted": "#1b5e20"}.get(summary["verdict"], "#555")
    rows = "\n".join(
        f"<tr class='{'drifted' if f.drifted else ''}'><td>{e(name)}</td><td>{f.kind}</td>"
        f"<td>{'Kolmogorov-Smirnov' if f.test == 'ks' else 'chi-squared'}</td>"
        f"<td>{f.distance:.3f}</td><td>{f.p_value:.3g}</td>"
        f"<td>{'DRIFTED' if f.drifted else 'no'}</td></tr>"
        for name, f in features.items()
    )
    moved = "".join(f"<li>{e(line)}</li>" for line in summary["what_moved"])
    t = summary["thresholds"]
    window, reference = summary.get("window", {}), summary.get("reference", {})
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Drift report: {e(summary["verdict"])}</title>
<style>body{{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}
tr.drifted{{background:#fde0e0}}.verdict{{color:#fff;background:{colour};padding:.5em 1em;
display:inline-block;font-size:1.4em}}img{{max-width:100%}}</style></head><body>
<h1>Drift report</h1>
<p class="verdict">{e(summary["verdict"].upper())}</p>
<p>{summary["records"]} recorded predictions from {e(window.get("since", "?"))} to
{e(window.get("until", "?"))} (endpoints: {e(json.dumps(summary["endpoints"]))}), served by
{e(str(summary["model"]["bento_model"]))} (MLflow version {e(str(summary["model"]["model_version"]))}).
Inputs are compared with {e(reference.get("inputs", "the training images"))}; outputs with
{e(reference.get("outputs", "the served model's answers on the validation images"))}.</p>
<p>A feature has drifted when its test gives p &lt; {t["p_value"]} <em>and</em> its distance is at
least {t["min_distance"]} (distance: the Kolmogorov-Smirnov statistic, the largest gap between the
two cumulative distributions; for the predicted class, the total variation distance, the share
of predictions that would have to change class). The window has drifted when any feature has;
with fewer than {t["min_records"]} records there is no verdict.</p>
<h2>Features</h2>
<table><tr><th>feature</th><th>kind</th><th>test</th><th>distance</th><th>p-value</th>
<th>drifted</th></tr>
{rows}
</table>
<ul>{moved}</ul>
<p>{e(extras(summary))}</p>
{figures_html(features, arrays) if features else ""}
</body></html>
"""


def write_metrics(summary: dict[str, Any], path: Path, now: float) -> None:
    """The report's verdict as Prometheus metrics in the text format, for node_exporter's textfile
    collector (the usual way a batch job's result reaches Prometheus): when it ran, how many
    records it read, and whether the traffic drifted (absent when there were too few records).
    deploy/prometheus/alerts.yml alerts on a drifted verdict and on a report that stopped running."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    Gauge(
        "fashion_drift_report_timestamp_seconds",
        "When the last drift report (make monitor) ran, Unix time",
        registry=registry,
    ).set(now)
    Gauge(
        "fashion_drift_records", "Prediction records in the last drift report's window",
        registry=registry,
    ).set(summary["records"])  # fmt: skip
    if summary["drifted"] is not None:
        Gauge(
            "fashion_drift_detected",
            "1 if the last drift report found the traffic drifted, 0 if not",
            registry=registry,
        ).set(int(summary["drifted"]))
    write_to_textfile(str(path), registry)  # written to a temporary file, then renamed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--records",
        type=Path,
        help="directory of the prediction records (default: FASHION_MNIST_MONITORING_DIR, "
        "else serve.monitoring.records_dir)",
    )
    parser.add_argument(
        "--since",
        help="window start: ISO time (UTC) or a duration ago, 30m/24h/7d "
        "(default: monitor.window_hours ago)",
    )
    parser.add_argument("--until", help="window end (default: now)")
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument(
        "--model",
        help="BentoML model tag whose answers are compared "
        "(default: the one that served most records in the window)",
    )
    parser.add_argument("--out", type=Path, default=Path("reports/monitor"))
    parser.add_argument("--fail-on-drift", action="store_true", help="exit 1 when drifted")
    args = parser.parse_args()
    params = load_params(args.params)
    now = dt.datetime.now(dt.UTC)
    try:
        since = parse_when(args.since, now) if args.since else None
        until = parse_when(args.until, now) if args.until else now
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    since = since or now - dt.timedelta(hours=params.monitor.window_hours)
    records_dir = args.records or Path(
        os.environ.get("FASHION_MNIST_MONITORING_DIR")
        or params.serve.monitoring.records_dir
        or "monitoring"
    )
    records, unreadable = read_prediction_records(records_dir, since, until)
    train = load_split(args.data / "train.npz")
    val = load_split(args.data / "val.npz")
    context = {
        "window": {
            "since": format_time(since.timestamp()),
            "until": format_time(until.timestamp()),
        },
        "records_dir": str(records_dir),
        "unreadable_lines": unreadable,
        "reference": {
            "inputs": f"{args.data / 'train.npz'} ({len(train)} images)",
            "outputs": f"the served model's answers on {args.data / 'val.npz'} ({len(val)} images)",
        },
    }
    summary, features, arrays = build_report(
        records,
        train.x,
        val.x,
        params.monitor,
        params.serve.monitoring.low_confidence,
        model=args.model,
        context=context,
    )
    write_atomically(args.out / "drift.json", lambda p: p.write_text(json.dumps(summary, indent=2)))
    write_metrics(summary, args.out / "drift.prom", now.timestamp())
    page = render_html(summary, features, arrays)
    write_atomically(args.out / "drift.html", lambda p: p.write_text(page))
    window = f"{since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC"
    print(
        f"{summary['verdict'].upper()}: {len(records)} records, {window} -> {args.out}/drift.html"
    )
    for line in summary["what_moved"]:
        print(f"  {line}")
    if args.fail_on_drift and summary["drifted"]:
        sys.exit(1)


if __name__ == "__main__":
    main()

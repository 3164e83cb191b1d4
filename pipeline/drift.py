"""Drift report (`make monitor`): the predictions the service recorded, against the training data.

Reads the prediction records of a time window (pipeline/core/prediction_log.py), compares them
feature by feature with the training images and with the served model's answers on the
validation split, and writes, under --out:
- drift.json: the summary, which DVC reads as metrics (`dvc metrics show reports/monitor/drift.json`);
- drift.html: the same with histograms, for a person;
- drift.prom: the verdict for Prometheus (node_exporter's textfile collector).
The verdict line and one line per feature go to stdout; diagnostics to the log (stderr).
Exit status: 0; 1 with --fail-on-drift when the window drifted; 2 on an error (bad arguments or
params, the served model not in the BentoML store).

The parts are in pipeline/monitor/: statistics.py (the tests and the rule), report.py (the
report of a window), page.py with templates/drift.html.j2 (drift.html), metrics.py (drift.prom).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import re
import sys
from pathlib import Path

import numpy as np

from pipeline.core import paths
from pipeline.core.params import ParamsError, load_params
from pipeline.core.prediction_log import format_time, parse_time
from pipeline.core.prediction_log import read_records as read_prediction_records
from pipeline.monitor.metrics import write_metrics
from pipeline.monitor.page import render_html
from pipeline.monitor.report import Sources, build_report
from pipeline.monitor.statistics import Outputs
from pipeline.shared.dataset import load_split, write_atomically
from pipeline.shared.logs import configure_logging

log = logging.getLogger("pipeline.drift")


class ModelNotInStore(LookupError):
    """The model whose answers are the reference is not in the BentoML store."""


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


def served_model_outputs(tag: str, images: np.ndarray) -> Outputs:
    """The answers of the BentoML store's model `tag` (its ONNX export, as served) on `images`."""
    import bentoml

    from pipeline.core.inference import OnnxClassifier

    try:
        model = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        home = os.environ.get("BENTOML_HOME", "~/bentoml")
        raise ModelNotInStore(
            f"the served model {tag} is not in the BentoML store ({home}); set BENTOML_HOME to "
            "the serving machine's store, or pass --model <tag> "
            "(`python -m pipeline.register --import-only` imports the current champion)"
        ) from None
    log.info("drift report: answers of %s on %d validation images", tag, len(images))
    proba = OnnxClassifier(model.path_of(model.info.metadata["onnx_file"])).predict_proba(images)
    return Outputs(class_ids=proba.argmax(axis=1), confidences=proba.max(axis=1).astype(np.float64))


def parse_args() -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=paths.PARAMS)
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
    parser.add_argument("--data", type=Path, default=paths.PREPARED)
    parser.add_argument(
        "--model",
        help="BentoML model tag whose answers are compared "
        "(default: the one that served most records in the window)",
    )
    parser.add_argument("--out", type=Path, default=paths.MONITOR_REPORTS)
    parser.add_argument("--fail-on-drift", action="store_true", help="exit 1 when drifted")
    return parser, parser.parse_args()


def main() -> None:
    configure_logging()  # ours at INFO; the libraries' (BentoML, matplotlib) only when they warn
    parser, args = parse_args()
    try:
        params = load_params(args.params)
    except ParamsError as err:
        log.error("drift report: %s", err)
        sys.exit(2)
    now = dt.datetime.now(dt.UTC)
    try:
        since = parse_when(args.since, now) if args.since else None
        until = parse_when(args.until, now) if args.until else now
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))  # exits 2
    since = since or now - dt.timedelta(hours=params.monitor.window_hours)
    records_dir = args.records or Path(
        os.environ.get("FASHION_MNIST_MONITORING_DIR")
        or params.serve.monitoring.records_dir
        or "monitoring"
    )
    records, unreadable = read_prediction_records(records_dir, since, until)
    log.info(
        "drift report: %d records in %s (unreadable lines: %d)",
        len(records),
        records_dir,
        unreadable,
    )
    train_file = args.data / paths.SPLIT_FILES["train"]
    val_file = args.data / paths.SPLIT_FILES["val"]
    train, val = load_split(train_file), load_split(val_file)
    sources = Sources(
        since=format_time(since.timestamp()),
        until=format_time(until.timestamp()),
        records_dir=str(records_dir),
        unreadable_lines=unreadable,
        reference_inputs=f"{train_file} ({len(train)} images)",
        reference_outputs=f"the served model's answers on {val_file} ({len(val)} images)",
    )
    try:
        report = build_report(
            records,
            train.x,
            val.x,
            params.monitor,
            params.serve.monitoring.low_confidence,
            outputs_of=served_model_outputs,
            model=args.model,
            sources=sources,
        )
    except ModelNotInStore as err:
        log.error("drift report: %s", err)
        sys.exit(2)
    summary = json.dumps(report.summary(), indent=2)
    write_atomically(args.out / "drift.json", lambda p: p.write_text(summary))
    write_metrics(report.records, report.drifted, args.out / "drift.prom", now.timestamp())
    page = render_html(report)
    write_atomically(args.out / "drift.html", lambda p: p.write_text(page))
    log.info("drift report: wrote drift.json, drift.html and drift.prom in %s", args.out)
    window = f"{since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC"
    print(f"{report.verdict.upper()}: {len(records)} records, {window} -> {args.out}/drift.html")
    for line in report.what_moved:
        print(f"  {line}")
    if args.fail_on_drift and report.drifted:
        sys.exit(1)


if __name__ == "__main__":
    main()

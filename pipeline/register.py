"""Stage `register`: promote the experiment's best validated run to `@champion`, if it earns it.

This module is the stage's entry point: its arguments, the call to the flow, champion.json and
the lines it prints. The steps, each in its module under pipeline/promotion/ (flow.py runs them):
- choice.py and judge.py: the candidate is the best run validated on the current validation split
  (runs a rollback took `@champion` from excepted, unless --allow-rolled-back); the gate compares
  it with the champion on validation accuracy (a champion validated on other data is first
  re-measured on this split) and on the feedback slice (both measured there; an empty slice is
  not checked); test accuracy is reported, never compared.
- export.py and parity.py: the candidate's logged model file must have the SHA-256 its run
  recorded (the file `evaluate` scored); its ONNX export (the service's runtime) and its explainer
  export must reproduce evaluate's predictions on every test image.
- promote.py and registry.py: a model version with its lineage tags and model card; the
  `champion` alias.
- bento_store.py: the champion's files in the BentoML model store, each copy hash-checked.

Promotion registers a model version, logs the checked ONNX files to the run, decides again
against the registry as it is now, tags the version with the champion it replaces (what
`python -m pipeline.rollback` goes back to) and moves the `champion` alias (the commit point),
checking at each step that the bytes are still the same; a candidate that fails anywhere, or that
another register's promotion overtook, leaves the champion untouched. On a local MLflow store one register
at a time decides and promotes (registry.py's `promotion_lock`). The decision and why go to
champion.json (record.py's `Decision`). Whatever was decided, the local BentoML store then serves
the `@champion` (`<serve.bento_model_name>:latest`), imported from MLflow when missing: after a
promotion, on a teammate's machine that shares the MLflow server, or after a register was killed
(`python -m pipeline.register --import-only` does just that; `make serve` runs it). Each step is
logged (steps.py); a killed register's leftovers are settled by the next (registry.py `repair`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core import paths
from pipeline.core.params import load_params
from pipeline.promotion.flow import RegisterInputs, import_champion, register
from pipeline.promotion.judge import describe_scores
from pipeline.promotion.record import Decision, RegisterError
from pipeline.shared.dataset import write_atomically
from pipeline.shared.logs import configure_logging
from pipeline.shared.tracking import ModelFileError, TrackingUnavailable, tracking_access


def arguments() -> argparse.ArgumentParser:
    """The stage's command line; the defaults are dvc.yaml's paths (pipeline/core/paths.py)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=paths.PARAMS)
    parser.add_argument("--metrics", type=Path, default=paths.EVAL_METRICS)
    parser.add_argument("--predictions", type=Path, default=paths.PREDICTIONS)
    parser.add_argument("--data", type=Path, default=paths.PREPARED, help="prepared .npz splits")
    parser.add_argument("--run", type=Path, default=paths.TRAIN_RUN, help="train's run id")
    parser.add_argument("--out", type=Path, default=paths.CHAMPION)
    parser.add_argument(
        "--import-only",
        action="store_true",
        help="only bring the MLflow @champion into the local BentoML store (for `make serve`)",
    )
    parser.add_argument(
        "--allow-rolled-back",
        action="store_true",
        help="let runs a rollback took @champion from be candidates again (this run only)",
    )
    return parser


def result_lines(record: Decision) -> str:
    """What register prints last: the decision and why, both models' scores, what is served."""
    champion = record.champion
    where = (
        f"{champion.model_name} v{champion.version} ({champion.bento_model})"
        if champion
        else "none"
    )
    return (
        f"register: {record.decision}: {record.reason}\n"
        f"{describe_scores(record.scores)}\nchampion: {where}\n"
        f"BentoML store serves: {record.served}"
    )


def main() -> None:
    configure_logging()
    args = arguments().parse_args()
    params = load_params(args.params)
    try:
        with tracking_access():
            if args.import_only:
                served = import_champion(params)
                print(f"register: serving {served or 'nothing: there is no @champion yet'}")
                return
            inputs = RegisterInputs(
                params, args.metrics, args.predictions, args.data, args.run, args.allow_rolled_back
            )
            record = register(inputs)
    except (TrackingUnavailable, RegisterError, ModelFileError) as err:
        sys.exit(f"register failed: {err}")
    # A register killed while writing leaves the previous champion.json, never half of one.
    write_atomically(args.out, lambda tmp: tmp.write_text(record.to_json()))
    print(result_lines(record))


if __name__ == "__main__":
    main()

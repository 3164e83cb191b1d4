"""Where the pipeline's files are, relative to the repository root: each path written once here.

The stages' command-line defaults are these paths, and the other code (the drift report,
benchmarks, the load test) reads them from here. dvc.yaml names the same paths in its stages'
`cmd`, `deps` and `outs` (DVC reads only YAML); tests/test_structure.py checks that the two
agree, so a path renamed in one and not the other fails a test. Plain constants, no I/O: the
service imports this module too (through params.py) and the Bento packs it.
"""

from __future__ import annotations

from pathlib import Path

PARAMS = Path("params.yaml")  # every stage's --params, and the service's params file

# fetch: the four IDX files and where each came from
RAW = Path("data/raw")
SOURCES_FILE = "sources.json"
SOURCES = RAW / SOURCES_FILE

# feedback: the review decisions people take (git-tracked), the curated corrections, its reports
REVIEW = Path("feedback/review.csv")
FEEDBACK = Path("data/feedback")
CORRECTIONS_FILE = "corrections.npz"
CORRECTIONS = FEEDBACK / CORRECTIONS_FILE
FEEDBACK_REPORTS = Path("reports/feedback")
PENDING = FEEDBACK_REPORTS / "pending.csv"

# prepare: the .npz splits, the feedback slice beside them, the data report
PREPARED = Path("data/prepared")
SPLIT_FILES = {"train": "train.npz", "val": "val.npz", "test": "test.npz"}
FEEDBACK_SLICE = "feedback.npz"  # the held-out corrections (the gate's second side)
TEST_SPLIT = PREPARED / SPLIT_FILES["test"]  # also the images the benchmarks send
DATA_REPORTS = Path("reports/data")  # report.json, its CSV and feedback.json
DATA_REPORT = DATA_REPORTS / "report.json"

# train: the model (the file MLflow logged), its history, metrics and MLflow run
MODEL = Path("models/model.keras")
TRAIN_REPORTS = Path("reports/train")
HISTORY = TRAIN_REPORTS / "history.csv"
TRAIN_METRICS = TRAIN_REPORTS / "metrics.json"
TRAIN_RUN = TRAIN_REPORTS / "run.json"

# evaluate: the reports directory and the two files register reads from it
EVAL_REPORTS = Path("reports/eval")
EVAL_METRICS = EVAL_REPORTS / "metrics.json"
PREDICTIONS = EVAL_REPORTS / "predictions.csv"

# register (and `make rollback`): the decision record
CHAMPION = Path("reports/register/champion.json")

# Not a stage: the drift report `make monitor` writes (pipeline/drift.py)
MONITOR_REPORTS = Path("reports/monitor")

"""What a promotion is about: the files of a served model, the candidate run, the champion version
and the decision record written to champion.json."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pipeline.core.inference import MODEL_FILE, ONNX_FILE
from pipeline.promotion.export import EXPLAINER_JSON, EXPLAINER_ONNX

ALIAS = "champion"
# Every file of a served model and its SHA-256's key (a version tag, the champion summary's field).
# The .keras file is the registered model itself; promotion logs the others to the run, each
# version in a folder of its own (two promotions of one run never overwrite each other's files).
SHA256_KEYS = {
    MODEL_FILE: "model_sha256",
    ONNX_FILE: "onnx_sha256",
    EXPLAINER_ONNX: "explainer_onnx_sha256",
    EXPLAINER_JSON: "explainer_json_sha256",
}
EXPORTS = (ONNX_FILE, EXPLAINER_ONNX, EXPLAINER_JSON)
# Where versions promoted before the per-version folders have them.
LEGACY_ARTIFACTS = {
    ONNX_FILE: f"onnx/{ONNX_FILE}",
    EXPLAINER_ONNX: f"explainer/{EXPLAINER_ONNX}",
    EXPLAINER_JSON: f"explainer/{EXPLAINER_JSON}",
}
# A version's `promotion` tag: how far its promotion got. A register killed mid-way leaves
# "in_progress"; the next register marks such a version "promoted" if it is @champion, else
# "abandoned" (once its register is known to be gone).
PROMOTION = "promotion"
PROMOTION_OWNER = "promotion_owner"  # host:pid:start-time of the register promoting it
# The version a promotion (or a rollback) replaced as `@champion` ("none": there was none): what
# `python -m pipeline.rollback` goes back to.
REPLACED_VERSION = "replaced_version"
# A version a rollback took `@champion` from: "pending" while that rollback moves the alias, then
# "true"; "abandoned" if the rollback died before the move; "lifted" once a rollback restores it.
# A run with a version "pending" or "true" is no candidate for register (unless it is the
# champion, or register runs with --allow-rolled-back). With it: ROLLED_BACK_KEYS, who and why.
ROLLED_BACK = "rolled_back"
BARRED = ("pending", "true")
ROLLED_BACK_KEYS = ("rolled_back_reason", "rolled_back_by", "rolled_back_at", "rolled_back_to")
ROLLBACK_OWNER = "rollback_owner"  # host:pid:start-time of the rollback that marked it
# On the version a rollback restored: from which version, why, by whom, when.
RESTORED_KEYS = ("restored_from", "restored_reason", "restored_by", "restored_at")


def exports_dir(version: str) -> str:
    """The run's artifact folder that holds a version's exports."""
    return f"promotion/v{version}"


class RegisterError(RuntimeError):
    """The candidate cannot be promoted (e.g. failed parity); the message says why."""


@dataclass(frozen=True)
class Candidate:
    """The experiment's best validated run, as `train` and `evaluate` tagged and logged it."""

    run_id: str
    run_name: str
    model_uri: str  # models:/<model_id> of the Keras model the run logged
    val_accuracy: float
    test_accuracy: float
    val_data_hash: str
    model_sha256: str
    git_commit: str
    data_hash: str


@dataclass(frozen=True)
class Champion:
    """A registered model version's identity and metrics (from its tags); "unknown" where a version
    promoted by older code lacks one."""

    model_name: str
    version: str
    run_id: str
    val_accuracy: float | None
    test_accuracy: float | None
    val_data_hash: str
    model_sha256: str
    onnx_sha256: str
    explainer_onnx_sha256: str
    explainer_json_sha256: str
    git_commit: str
    data_hash: str
    bento_model: str | None
    exports_dir: str | None = None  # None: promoted before per-version folders (LEGACY_ARTIFACTS)

    def sha256(self, file: str) -> str:
        """The recorded SHA-256 of one of the served files (MODEL_FILE, ONNX_FILE, ...)."""
        return getattr(self, SHA256_KEYS[file])

    def artifact(self, file: str) -> str:
        """Where in its run promotion logged one of the exports (ONNX_FILE, ...)."""
        return f"{self.exports_dir}/{file}" if self.exports_dir else LEGACY_ARTIFACTS[file]


@dataclass(frozen=True)
class Decision:
    """champion.json: what register (or a rollback) decided and why, and what the local BentoML
    store serves. Built once, when everything in it is known (flow.py, rollback.py)."""

    # superseded: another register changed the registry while this one promoted; it decided
    # again. rolled_back: `python -m pipeline.rollback` moved `@champion` back (no candidate).
    decision: Literal["kept", "promoted", "superseded", "rolled_back"]
    reason: str
    chosen_by: str
    candidate: Candidate | None
    champion: Champion | None
    previous_champion: Champion | None
    champion_remeasured: dict[str, Any] | None
    pipeline_run: dict[str, Any] | None  # the run this `dvc repro` trained: id, test accuracy
    gate: dict[str, float]
    parity: dict[str, Any] | None
    served: str | None = field(default=None)
    # Both models' accuracies on the validation split and on the feedback slice (judge.py).
    scores: dict[str, Any] | None = field(default=None)
    rollback: dict[str, Any] | None = field(default=None)  # from, to, reason, by, at

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

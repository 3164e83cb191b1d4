"""The one typed loader of params.yaml: every stage and the service read their values through it.

Validation happens before any work: an unknown key, a wrong type or an architecture that shrinks
the image below 1x1 raises ParamsError naming the key (or the layer).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.core.architecture import layer_table
from pipeline.core.fashion_mnist import IMAGE_SIZE
from pipeline.core.paths import PARAMS

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the bad key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FetchParams(_Strict):
    timeout_s: float = Field(gt=0)
    retries: int = Field(ge=0)


class FeedbackParams(_Strict):
    """How the `feedback` stage curates the corrections (pipeline/feedback.py)."""

    # required: a new correction waits ("pending") until feedback/review.csv accepts it;
    # auto: accepted unless review.csv rejects it. Conflicts and test images are held either way.
    review: Literal["required", "auto"]
    # Above cap_floor images, one source (or class) holds at most this share of the accepted set.
    max_share_per_source: float = Field(gt=0.0, le=1.0)
    max_share_per_class: float = Field(gt=0.0, le=1.0)
    cap_floor: int = Field(ge=1)


class PrepareFeedbackParams(_Strict):
    """How `prepare` mixes the accepted corrections into training (pipeline/prepare.py)."""

    enabled: bool  # false: train on the original data only; the feedback slice is still held out
    repeat: int = Field(ge=1)  # each correction outside the slice joins train this many times
    # A correction is in the held-out feedback slice when int(sha256[:8], 16) % 1000 < this.
    slice_permille: int = Field(ge=0, le=1000)


class PrepareParams(_Strict):
    val_fraction: float = Field(gt=0.0, lt=1.0)
    max_train_samples: int | None = Field(gt=0)
    max_test_samples: int | None = Field(gt=0)
    seed: int
    feedback: PrepareFeedbackParams


class PoolParams(_Strict):
    size: int = Field(ge=1)
    strides: int = Field(ge=1)


class ConvBlock(_Strict):
    filters: int = Field(ge=1)
    kernel_size: int = Field(ge=1)
    strides: int = Field(ge=1)
    padding: Literal["valid", "same"]
    batch_norm: bool
    activation: Literal["relu", "elu", "gelu", "swish", "tanh"]
    pool: PoolParams | None
    dropout: Fraction


class DenseLayer(_Strict):
    units: int = Field(ge=1)
    dropout: Fraction


class ModelParams(_Strict):
    conv_blocks: list[ConvBlock] = Field(min_length=1)
    dense: list[DenseLayer]
    # The saved model averages its answers for the image and its mirror image (pipeline/training/model.py).
    test_time_flip: bool

    @model_validator(mode="after")
    def _fits_the_image(self) -> ModelParams:
        layer_table(IMAGE_SIZE, self.conv_blocks)  # raises naming the first layer that does not fit
        return self


class Augmentation(_Strict):
    horizontal_flip: bool
    translate: float = Field(ge=0.0, le=0.5)  # fraction of the image size, each direction


class FineTuneParams(_Strict):
    """The schedule of a training that starts from the champion's weights (train.init: champion);
    every other training value is train's own."""

    epochs: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    warmup_epochs: int = Field(ge=0)


class TrainParams(_Strict):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    optimizer: Literal["adam", "adamw", "sgd"]
    learning_rate: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    lr_schedule: Literal["constant", "cosine"]
    warmup_epochs: int = Field(ge=0)
    early_stopping_patience: int = Field(ge=1)
    label_smoothing: Fraction
    augmentation: Augmentation
    seed: int
    distribution: Literal["none", "mirrored", "multi_worker"]
    # scratch: new random weights; champion: the MLflow @champion's, trained on with `fine_tune`.
    init: Literal["scratch", "champion"]
    fine_tune: FineTuneParams

    @model_validator(mode="after")
    def _fine_tunes_on_one_machine(self) -> TrainParams:
        # Every worker would have to fetch the same champion; only the chief talks to MLflow.
        if self.init == "champion" and self.distribution == "multi_worker":
            raise ValueError("init: champion does not work with distribution: multi_worker")
        return self


class MlflowParams(_Strict):
    experiment_name: str = Field(min_length=1)
    registered_model_name: str = Field(min_length=1)


class RegisterParams(_Strict):
    min_accuracy: float = Field(ge=0.0, le=1.0)
    max_regression: float = Field(ge=0.0, le=1.0)
    # How much worse than the champion a candidate may be on the feedback slice (both measured).
    max_feedback_regression: float = Field(ge=0.0, le=1.0)


class MonitoringParams(_Strict):
    # False: nothing is recorded or counted (benchmarks/monitoring_cost.py measures the difference).
    enabled: bool
    # Directory of the prediction records (JSON lines), relative to the service's working
    # directory; None: predictions are only counted in /metrics, not recorded.
    records_dir: str | None = Field(min_length=1)
    low_confidence: float = Field(gt=0.0, le=1.0)
    queue_size: int = Field(ge=1)
    # The records directory's cap, retention and file size (pipeline/core/record_files.py).
    max_disk_mb: int = Field(ge=1)
    retention_days: float = Field(gt=0)
    max_file_mb: int = Field(ge=1)

    @model_validator(mode="after")
    def _parts_fit_the_cap(self) -> MonitoringParams:
        if self.max_file_mb > self.max_disk_mb:
            raise ValueError(
                f"max_file_mb ({self.max_file_mb}) must not exceed max_disk_mb ({self.max_disk_mb})"
            )
        return self


class FeedbackServeParams(_Strict):
    """POST /feedback's limits (service/feedback.py)."""

    max_items_per_request: int = Field(ge=1)
    max_per_source_per_day: int = Field(ge=1)
    max_per_day: int = Field(ge=1)
    max_disk_mb: float = Field(gt=0)
    id_ttl_hours: float = Field(gt=0)


class ServeParams(_Strict):
    bento_model_name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    max_images_per_request: int = Field(ge=1)
    max_upload_bytes: int = Field(ge=1)
    # Uploads (service/inputs.py): the memory one decode may need, and decodes at once per worker.
    max_decode_mb: float = Field(gt=0)
    decode_threads: int = Field(ge=1)
    # Load shedding (service/admission.py): the work a worker takes on, requests and MB of bodies.
    queue_target_s: float = Field(gt=0)
    min_in_flight: int = Field(ge=1)
    max_in_flight: int = Field(ge=1)
    max_in_flight_mb: float = Field(gt=0)
    request_timeout_s: float = Field(gt=0)
    # API worker processes, each with the model (docs/serving.md, "Workers"); "cpu_count": one per CPU.
    workers: Annotated[int, Field(ge=1)] | Literal["cpu_count"]
    monitoring: MonitoringParams
    feedback: FeedbackServeParams

    @model_validator(mode="after")
    def _in_flight_range(self) -> ServeParams:
        if self.min_in_flight > self.max_in_flight:
            raise ValueError(
                f"min_in_flight ({self.min_in_flight}) must not exceed "
                f"max_in_flight ({self.max_in_flight})"
            )
        return self


class MonitorParams(_Strict):
    """The drift report's window and thresholds (pipeline/drift.py)."""

    window_hours: float = Field(gt=0)
    min_records: int = Field(ge=1)
    p_value: float = Field(gt=0.0, lt=1.0)
    min_distance: float = Field(ge=0.0, le=1.0)


class Params(_Strict):
    fetch: FetchParams
    feedback: FeedbackParams
    prepare: PrepareParams
    model: ModelParams
    train: TrainParams
    mlflow: MlflowParams
    # "register" would shadow BaseModel.register; the YAML key stays `register`.
    register_: RegisterParams = Field(alias="register")
    serve: ServeParams
    monitor: MonitorParams

    @property
    def register(self) -> RegisterParams:
        return self.register_


def _describe(err: ValidationError, source: str, section: str = "") -> str:
    lines = [f"{source}: invalid parameters"]
    for e in err.errors():
        loc = (section, *e["loc"]) if section else e["loc"]
        key = ".".join(str(part) for part in loc) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "missing key"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_params(raw: object, source: str = str(PARAMS)) -> Params:
    """Validate an already-parsed params mapping."""
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_describe(err, source)) from None


def _read(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as err:
        raise ParamsError(f"{path}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None


def load_params(path: str | Path = PARAMS) -> Params:
    """Read and validate params.yaml; raises ParamsError naming every bad key."""
    return parse_params(_read(Path(path)), str(path))


def load_serve_params(path: str | Path = PARAMS) -> ServeParams:
    """Only the `serve` section, validated like load_params does: all the service reads."""
    raw = _read(Path(path))
    if not isinstance(raw, dict) or "serve" not in raw:
        raise ParamsError(f"{path}: invalid parameters\n  serve: missing key")
    try:
        return ServeParams.model_validate(raw["serve"])
    except ValidationError as err:
        raise ParamsError(_describe(err, str(path), "serve")) from None


def flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """{'a': {'b': [1, {'c': 2}]}} -> {'a.b.0': 1, 'a.b.1.c': 2}: params as MLflow logs them."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list) and any(isinstance(v, Mapping | list) for v in value):
            flat.update(flatten({str(i): v for i, v in enumerate(value)}, f"{name}."))
        else:
            flat[name] = value
    return flat

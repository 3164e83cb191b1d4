"""The service's request and response types: the API schema (OpenAPI at /docs.json)."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from pipeline.core.fashion_mnist import IMAGE_SIZE
from pipeline.core.params import ServeParams
from service.inputs import FORMATS

# fail_fast: one bad pixel gives one error, not one per pixel of a 64-image request.
Pixel = Annotated[int, Field(ge=0, le=255)]
Row = Annotated[list[Pixel], Field(fail_fast=True, min_length=IMAGE_SIZE, max_length=IMAGE_SIZE)]
Image28 = Annotated[list[Row], Field(fail_fast=True, min_length=IMAGE_SIZE, max_length=IMAGE_SIZE)]
Images = Annotated[
    list[Image28],
    Field(
        fail_fast=True,
        min_length=1,
        description="28x28 images as rows of integer pixels 0-255, light on dark",
    ),
]


def _auto_is_none(value: Any) -> Any:
    return None if value in ("auto", "", None) else value


Invert = Annotated[
    bool | None,
    BeforeValidator(_auto_is_none),
    Field(
        description="true/false forces inverting the image; auto (default) inverts light backgrounds"
    ),
]


class ModelRef(BaseModel):
    name: str = Field(description="MLflow registered model name")
    version: str = Field(description="MLflow model version (the @champion when it was served)")


class Prediction(BaseModel):
    class_id: int
    class_name: str
    confidence: float
    probabilities: dict[str, float] = Field(
        description="all ten class probabilities, by class name"
    )
    model: ModelRef
    prediction_id: str | None = Field(
        None,
        description="a signed receipt of this answer (the pixels, the model, its class): send it "
        "to POST /feedback with the right label to correct or confirm the answer",
    )


class ClassifiedImage(Prediction):
    inverted: bool = Field(
        description="whether the image was inverted to light-on-dark (its background was light, "
        "or invert=true)"
    )


# /explain and /samples (service/explain.py)


class Grid(BaseModel):
    png: str = Field(description="data:image/png;base64 URL of the grid image")
    cols: int = Field(description="tiles per row; tile k is in row k // cols, column k % cols")
    rows: int
    tile: int = Field(description="tile width and height in pixels")
    gap: int = Field(description="pixels between tiles")

    @classmethod
    def of(cls, png: str, cols: int, count: int, tile: int, gap: int) -> Grid:
        """A grid of `count` tiles in rows of `cols`."""
        return cls(png=png, cols=cols, rows=-(-count // cols), tile=tile, gap=gap)


class LayerActivations(BaseModel):
    layer: str = Field(description="the Keras layer, e.g. conv_0 or pool_0")
    output: str = Field(description="the layer whose output is shown (a conv's activation)")
    kind: str = Field(description="conv or pool")
    n_in: int = Field(description="input size n (n x n)")
    f: int = Field(description="kernel or pool size f")
    p: float = Field(description="padding p per side (0.5: Keras pads one more at bottom/right)")
    s: int = Field(description="stride s")
    n_out: int = Field(description="output size floor((n + 2p - f) / s) + 1")
    channels: int
    formula: str
    maps: Grid = Field(description="the feature maps, one grayscale tile per channel")
    low: list[float] = Field(description="per channel: the activation drawn as 0")
    high: list[float] = Field(description="per channel: the activation drawn as 255")


class Chain(BaseModel):
    """From the first conv layer's raw output c to its feature maps: z = scale * c + shift, a = g(z)."""

    batch_norm: bool = Field(description="scale and shift are batch norm's (inference mode)")
    activation: str = Field(description="g: relu, elu, gelu, swish/silu, tanh or linear")
    scale: list[float] = Field(description="per filter; gamma / sqrt(variance + epsilon) with BN")
    shift: list[float] = Field(description="per filter; the bias, or beta - mean * scale with BN")


class Filters(BaseModel):
    layer: str
    f: int
    count: int
    scale: float = Field(description="the largest absolute weight: full blue (-) or red (+)")
    grid: Grid = Field(description="the learned f x f kernels, blue negative, red positive")
    kernels: list[list[list[float]]] = Field(
        description="the kernels' weights, [filter][row][column], over pixels scaled to 0-1"
    )
    chain: Chain | None = Field(
        description="what makes the feature maps of the kernels' output (null: not known)"
    )


class ExplainedImage(ClassifiedImage):
    pixels: list[list[int]] = Field(description="the 28x28 pixels the model saw, 0-255")
    colour: list[list[list[int]]] | None = Field(
        default=None,
        description="a colour upload fitted the same way in RGB, [row][column][channel] 0-255 "
        "(inverted with the grayscale); null for a grayscale image",
    )
    image: str = Field(description="the same pixels as a data:image/png;base64 URL")
    layers: list[LayerActivations] = Field(description="every conv block and pooling layer")
    filters: Filters = Field(description="the first conv layer's learned filters")


class Sample(BaseModel):
    index: int = Field(description="its index in the test split")
    class_id: int
    class_name: str
    image: str = Field(description="28x28 PNG, light on dark, as a data URL")


class Samples(BaseModel):
    samples: list[Sample] = Field(
        description="test images shipped with the model (empty if it has no explainer)"
    )


class Predictions(BaseModel):
    predictions: list[Prediction] = Field(description="one per input image, in order")


class Metadata(BaseModel):
    model: ModelRef
    bento_model: str
    mlflow_run_id: str
    val_accuracy: float = Field(
        description="accuracy on the validation split: what it was chosen by"
    )
    test_accuracy: float = Field(description="accuracy on the held-out test split, reported only")
    model_sha256: str = Field(description="SHA-256 of the model file, as evaluated and registered")
    runtime: str = Field(description="what runs the model: its ONNX export under ONNX Runtime")
    onnx_sha256: str = Field(description="SHA-256 of the served ONNX file, as register checked it")
    git_commit: str
    data_hash: str
    class_names: list[str]
    input: dict[str, str]
    limits: dict[str, int | float]

    @classmethod
    def describe(cls, info: Any, serve: ServeParams) -> Metadata:
        """From a BentoML model's info (the labels and metadata `register` gave it) and the
        serving limits."""
        import onnxruntime

        labels = info.labels
        return cls(
            model=ModelRef(
                name=labels["mlflow_model_name"], version=labels["mlflow_model_version"]
            ),
            bento_model=str(info.tag),
            mlflow_run_id=labels["mlflow_run_id"],
            val_accuracy=float(labels["val_accuracy"]),
            test_accuracy=float(labels["test_accuracy"]),
            model_sha256=labels["model_sha256"],
            runtime=f"onnxruntime {onnxruntime.__version__}",
            onnx_sha256=labels["onnx_sha256"],
            git_commit=labels["git_commit"],
            data_hash=labels["data_hash"],
            class_names=list(info.metadata["class_names"]),
            input={
                "classify": f"multipart/form-data: field `image`, one {'/'.join(FORMATS)} file of "
                "any size and mode; optional field `invert`: true, false or auto (default)",
                "predict": 'application/json: {"images": [...]}, each image 28 rows of 28 '
                "integers 0-255 (light on dark, like Fashion-MNIST), "
                f"1 to {serve.max_images_per_request} images",
            },
            limits=serve.model_dump(
                include={"max_images_per_request", "max_upload_bytes", "request_timeout_s"}
            ),
        )


def predictions(proba: np.ndarray, class_names: list[str], model: ModelRef) -> list[Prediction]:
    """One Prediction per row of class probabilities (N, 10)."""
    ids = proba.argmax(axis=1)
    return [
        Prediction(
            class_id=int(i),
            class_name=class_names[i],
            confidence=float(p[i]),
            probabilities=dict(zip(class_names, map(float, p), strict=True)),
            model=model,
        )
        for i, p in zip(ids, proba, strict=True)
    ]


Label = Annotated[
    int | str,
    Field(description='the right class: its id 0-9 or its name, e.g. 4 or "Coat"'),
]
Source = Annotated[
    str | None,
    Field(
        pattern=r"^[A-Za-z0-9_.:@/+-]{1,64}$",
        description="who or what sends the corrections (a user, an application), for the caps "
        "and the curation's report; letters, digits and _.:@/+- only, at most 64",
    ),
]


class FeedbackItem(BaseModel):
    """One correction: the right class for an image this service answered, named by its
    prediction_id (from /classify, /predict or /explain) or given as its 28x28 pixels."""

    model_config = ConfigDict(extra="forbid")
    label: Label
    prediction_id: str | None = Field(None, max_length=4096)
    pixels: Image28 | None = Field(None, description="28 rows of 28 integers 0-255, light on dark")


FeedbackItems = Annotated[list[FeedbackItem], Field(min_length=1, description="the corrections")]


class StoredCorrection(BaseModel):
    id: str = Field(description="the stored correction's id")
    label: int
    label_name: str
    predicted: int = Field(description="the class the model answered for these pixels")
    predicted_name: str
    confidence: float
    model_version: str = Field(description="the MLflow version of the model that answered")
    agrees: bool = Field(description="whether the model's answer was the class given")


class FeedbackStored(BaseModel):
    stored: list[StoredCorrection] = Field(description="what was stored, in request order")

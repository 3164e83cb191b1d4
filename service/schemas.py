"""The service's request and response types: the API schema (OpenAPI at /docs.json)."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, BeforeValidator, Field

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


class ClassifiedImage(Prediction):
    inverted: bool = Field(
        description="whether the image was inverted to light-on-dark (its background was light, "
        "or invert=true)"
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

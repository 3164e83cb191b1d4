"""The champion model over HTTP: POST /classify (an image file), POST /predict (28x28 arrays),
GET /metadata; BentoML adds /readyz, /livez, /metrics and the OpenAPI docs at /.

One service: each worker process holds the champion's ONNX export under ONNX Runtime (no
TensorFlow; pipeline/inference.py, the path register checked against evaluate) and answers
requests itself. Concurrent requests in a worker are batched in-process (service/coalesce.py):
whatever arrived while the model was busy goes into its next call, which runs in a thread so the
event loop keeps parsing requests. Image files become pixels with the pipeline's own function
(pipeline/preprocess.py), also in a thread. `bentoml serve` from the repository root starts it
(bentofile.yaml).
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
import numpy as np
from fastapi import FastAPI

from service import settings
from service.coalesce import Coalescer
from service.guard import RequestGuard
from service.inputs import InputError, check_count, image_file_pixels
from service.schemas import (
    ClassifiedImage,
    Images,
    Invert,
    Metadata,
    Prediction,
    Predictions,
    predictions,
)

MAX_BATCH = 128  # images per model call; at least serve.max_images_per_request

MODEL_BATCH_IMAGES = bentoml.metrics.Histogram(
    name="fashion_model_batch_images",
    documentation="Images per model call (concurrent requests batched in one worker)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)

metadata_app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
serve = settings.serve_params()


@bentoml.service(name="fashion_classifier", workers=serve.workers, traffic={"timeout": 30})
@bentoml.asgi_app(metadata_app, path="/")
class FashionClassifier:
    bento_model = bentoml.models.BentoModel(settings.model_tag())

    def __init__(self) -> None:
        from pipeline.inference import OnnxClassifier

        if serve.max_images_per_request > MAX_BATCH:
            raise ValueError(f"serve.max_images_per_request must be at most {MAX_BATCH}")
        workers = (os.cpu_count() or 1) if serve.workers == "cpu_count" else serve.workers
        # The CPUs shared out between the workers: more model threads than CPUs only contend.
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        info = self.bento_model.info
        self.classifier = OnnxClassifier(
            self.bento_model.path_of(info.metadata["onnx_file"]), threads
        )
        self.class_names: list[str] = info.metadata["class_names"]
        self.metadata = Metadata.describe(info, serve)
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.coalesce = Coalescer(self._run_model, max_batch=MAX_BATCH, max_in_flight=1)

    @bentoml.api(route="/classify")
    async def classify(self, image: Path, invert: Invert = None) -> ClassifiedImage:
        """Classify one image file: grayscale, fitted to 28x28, inverted if its background is light."""
        try:
            pixels, inverted = await asyncio.to_thread(image_file_pixels, image, invert)
        except InputError as err:
            return err.response()
        (prediction,) = await self._predict(pixels[None])
        return ClassifiedImage(**dict(prediction), inverted=inverted)

    @bentoml.api(route="/predict")
    async def predict(self, images: Images) -> Predictions:
        """Classify 28x28 pixel arrays (0-255, light on dark); the answers come in input order."""
        try:
            check_count(len(images), serve.max_images_per_request)
        except InputError as err:
            return err.response()
        return Predictions(predictions=await self._predict(np.asarray(images, dtype=np.uint8)))

    async def _predict(self, pixels: np.ndarray) -> list[Prediction]:
        return predictions(await self.coalesce(pixels), self.class_names, self.metadata.model)

    async def _run_model(self, pixels: np.ndarray) -> np.ndarray:
        MODEL_BATCH_IMAGES.observe(len(pixels))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.model_thread, self.classifier.predict_proba, pixels)

    @metadata_app.get("/metadata")
    async def get_metadata(self) -> Metadata:
        """The served model: name, version, MLflow run, accuracy, runtime, classes, input format."""
        return self.metadata


FashionClassifier.add_asgi_middleware(RequestGuard)

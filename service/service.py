"""The champion model over HTTP: POST /classify (an image file), POST /predict (28x28 arrays),
GET /metadata; BentoML adds /readyz, /livez, /metrics and the OpenAPI docs at /.

Two services. FashionModel holds the model (a class attribute, so `bentoml build` packs it) behind
one batchable method: BentoML's adaptive batcher groups concurrent calls into one compiled model
call through pipeline/inference.py, the path evaluate and register use. FashionClassifier is the
HTTP API: it validates input, turns image files into pixels with the pipeline's own function
(pipeline/preprocess.py; the model scales pixels itself) and calls FashionModel through
bentoml.depends (a batchable method called on `self` would bypass the batcher), first grouping
the requests waiting at the same moment into one call (service/coalesce.py): each call between
the two services costs more CPU than an image's inference. `bentoml serve` from the repository
root starts both (bentofile.yaml).
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import aiohttp
import bentoml
import numpy as np
from fastapi import FastAPI

from service import patches, settings
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

# BentoML's bentoml_service_adaptive_batch_size counts the calls its batcher merged; the API
# coalesces requests into calls first, so this counts what the model actually got per run.
MODEL_BATCH_IMAGES = bentoml.metrics.Histogram(
    name="fashion_model_batch_images",
    documentation="Images per compiled model call",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)


def settle_heap() -> None:
    """Exempt the objects loaded so far (TensorFlow's are millions) from garbage collection:
    otherwise each full collection stalls every request in flight for 100-300 ms."""
    gc.collect()
    gc.freeze()


@bentoml.service(
    name="fashion_model",
    workers=1,
    threads=1,
    traffic={"timeout": 30},
    # BentoML's client recycles its connection pool every 100 calls by default, failing the calls
    # still in flight on it ("Cannot write to closing transport"): keep one pool instead.
    runner_connection={"max_requests": 2**62, "max_age": 1e12},
    logging={"access": {"enabled": False}},  # internal hop: the API service logs each request
)
class FashionModel:
    bento_model = bentoml.models.BentoModel(settings.model_tag())

    def __init__(self) -> None:
        from pipeline.inference import MODEL_FILE, Classifier, configure_threads

        patches.apply()
        # Leave a CPU to the API process: TensorFlow's pool threads spin while they wait for
        # work, and on 2 cores two of them took the CPU the API needed (1,840-1,990 vs
        # 1,270-1,540 single-image requests/s at concurrency 32).
        configure_threads(spare_cpus=1)
        self.classifier = Classifier.from_file(self.bento_model.path_of(MODEL_FILE))
        settle_heap()

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=MAX_BATCH, max_latency_ms=10_000)
    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, 28, 28) -> float32 class probabilities (N, 10)."""
        MODEL_BATCH_IMAGES.observe(len(images))
        return self.classifier.predict_proba(images)


metadata_app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@bentoml.service(name="fashion_classifier", workers=1, traffic={"timeout": 30})
@bentoml.asgi_app(metadata_app, path="/")
class FashionClassifier:
    model = bentoml.depends(FashionModel)

    def __init__(self) -> None:
        patches.apply()
        serve = settings.params().serve
        if serve.max_images_per_request > MAX_BATCH:
            raise ValueError(f"serve.max_images_per_request must be at most {MAX_BATCH}")
        self.max_images = serve.max_images_per_request
        self.metadata = Metadata.describe(bentoml.models.get(settings.model_tag()).info, serve)
        self.model_ref = self.metadata.model
        self.coalesce = Coalescer(self._call_model, max_batch=MAX_BATCH)
        settle_heap()

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
            check_count(len(images), self.max_images)
        except InputError as err:
            return err.response()
        return Predictions(predictions=await self._predict(np.asarray(images, dtype=np.uint8)))

    async def _predict(self, pixels: np.ndarray) -> list[Prediction]:
        return predictions(await self.coalesce(pixels), self.model_ref)

    async def _call_model(self, pixels: np.ndarray) -> np.ndarray:
        try:
            return await self.model.to_async.predict_proba(pixels)
        except aiohttp.ClientConnectionError:  # a pooled connection the model server had closed
            return await self.model.to_async.predict_proba(pixels)

    @metadata_app.get("/metadata")
    async def get_metadata(self) -> Metadata:
        """The served model: name, version, MLflow run, test accuracy, classes, input format."""
        return self.metadata


FashionClassifier.add_asgi_middleware(RequestGuard)

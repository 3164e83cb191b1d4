"""The champion model over HTTP: POST /classify (an image file), POST /predict (28x28 arrays),
GET /metadata; BentoML adds /readyz, /livez, /metrics and the OpenAPI docs at /.

One service: each worker process holds the champion's ONNX export under ONNX Runtime (no
TensorFlow; pipeline/core/inference.py, the path register checked against evaluate) and answers
requests itself. Concurrent requests in a worker are batched in-process (service/coalesce.py):
whatever arrived while the model was busy goes into its next call, which runs in a thread so the
event loop keeps parsing requests. Image files become pixels with the pipeline's own function
(pipeline/core/preprocess.py), also in a thread. `bentoml serve` from the repository root starts it
(bentofile.yaml). POST /explain, GET /samples and the page at /ui (service/explain.py,
service/ui.py) show what the network does with one image, layer by layer.
"""

from __future__ import annotations

import asyncio
import gc
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
import numpy as np
from fastapi import FastAPI
from prometheus_client import Counter, Histogram

from service import settings
from service.coalesce import Coalescer, Expired
from service.container_image import SERVING_IMAGE
from service.explain import load_explainer
from service.feedback import Corrections, FeedbackStore
from service.guard import RequestGuard
from service.inputs import Busy, Decoder, InputError, check_count
from service.monitoring import recorder
from service.prediction_ids import PredictionIds, Receipt, load_key
from service.schemas import (
    ClassifiedImage,
    ExplainedImage,
    FeedbackItems,
    FeedbackStored,
    Images,
    Invert,
    Metadata,
    Prediction,
    Predictions,
    Samples,
    Source,
    predictions,
)
from service.security import ApiSecurity, api_token
from service.ui import mount_ui

MAX_BATCH = 128  # images per model call; at least serve.max_images_per_request

MODEL_BATCH_IMAGES = Histogram(
    "fashion_model_batch_images",
    "Images per model call (concurrent requests batched in one worker)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
ABANDONED_IMAGES = Counter(
    "fashion_model_queue_abandoned_images",
    "Images that left the model's queue unanswered: cancelled (client gone, or BentoML's timeout "
    "answered 504) or expired (waited longer than serve.request_timeout_s)",
    ["reason"],
)


def settle_heap() -> None:
    """Exempt what start-up loaded from garbage collection, and run full collections 10x less
    often. Measured under the load test: each full collection paused a worker 50-190 ms (12-14
    of them in 45 s); with this, one, and p99 201 -> 107 ms at the same memory (docs/serving.md, "Under load and faults")."""
    gc.collect()
    gc.freeze()
    gen0, gen1, _ = gc.get_threshold()
    gc.set_threshold(gen0, gen1, 100)


metadata_app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
mount_ui(metadata_app)  # GET /ui/: the page, static files in service/ui/
serve = settings.serve_params()


@bentoml.service(
    name="fashion_classifier",
    image=SERVING_IMAGE,  # python:3.11-slim without compilers or git (service/container_image.py)
    workers=settings.workers(),
    traffic={"timeout": serve.request_timeout_s},
)
@bentoml.asgi_app(metadata_app, path="/")
class FashionClassifier:
    bento_model = bentoml.models.BentoModel(settings.model_tag())

    def __init__(self) -> None:
        from pipeline.core.inference import OnnxClassifier, altered_files

        if serve.max_images_per_request > MAX_BATCH:
            raise ValueError(f"serve.max_images_per_request must be at most {MAX_BATCH}")
        # The CPUs shared out between the workers: more model threads than CPUs only contend.
        threads = max(1, settings.cpus() // settings.workers())
        info = self.bento_model.info
        if altered := altered_files(Path(self.bento_model.path), info.labels, info.metadata):
            raise RuntimeError(  # an interrupted import: never serve it
                f"{info.tag}: {altered} are not what register stored; "
                "`python -m pipeline.register --import-only` imports the champion again"
            )
        self.classifier = OnnxClassifier(
            self.bento_model.path_of(info.metadata["onnx_file"]), threads
        )
        self.class_names: list[str] = info.metadata["class_names"]
        self.metadata = Metadata.describe(info, serve)
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.coalesce = Coalescer(
            self._run_model,
            MAX_BATCH,
            max_in_flight=1,
            max_wait=serve.request_timeout_s,
            on_abandoned=lambda reason, n: ABANDONED_IMAGES.labels(reason).inc(n),
        )
        self.decoder = Decoder(serve.decode_threads, serve.max_decode_mb, serve.request_timeout_s)
        # The explainer runs in a thread of its own, off the model thread /classify and /predict use.
        self.explainer = load_explainer(self.bento_model, self.class_names, self.metadata.model)
        # Records each answer off the request path (service/monitoring.py): drift report, /metrics.
        self.monitor = recorder(self.metadata.model.version, self.metadata.bento_model)
        # Corrections (service/feedback.py), stored next to the records; ids that carry answers.
        records = settings.records_dir()
        self.ids = PredictionIds(load_key(records), serve.feedback.id_ttl_hours * 3600)
        self.corrections = Corrections(
            FeedbackStore(records / "feedback" if records else None, serve.feedback),
            self.ids,
            self.class_names,
            self.metadata.model.version,
            self.metadata.bento_model,
        )
        settle_heap()

    @bentoml.api(route="/classify")
    async def classify(self, image: Path, invert: Invert = None) -> ClassifiedImage:
        """Classify one image file: grayscale, fitted to 28x28, inverted if its background is light."""
        try:
            fitted = await self.decoder.fit(image, invert)
            (prediction,) = await self._predict(fitted.pixels[None])
        except InputError as err:
            return err.response()
        self.monitor.record("classify", fitted.pixels[None], [prediction], fitted.inverted)
        return ClassifiedImage(**dict(prediction), inverted=fitted.inverted)

    @bentoml.api(route="/predict")
    async def predict(self, images: Images) -> Predictions:
        """Classify 28x28 pixel arrays (0-255, light on dark); the answers come in input order."""
        try:
            check_count(len(images), serve.max_images_per_request)
        except InputError as err:
            return err.response()
        pixels = np.asarray(images, dtype=np.uint8)
        try:
            answers = await self._predict(pixels)
        except InputError as err:
            return err.response()
        self.monitor.record("predict", pixels, answers)
        return Predictions(predictions=answers)

    async def _predict(self, pixels: np.ndarray) -> list[Prediction]:
        """The model's answers, through the worker's coalescer; a 503 InputError for images
        that waited longer than the request timeout (they never reach the model)."""
        answers = predictions(await self._model(pixels), self.class_names, self.metadata.model)
        for image, answer in zip(pixels, answers, strict=True):
            answer.prediction_id = self._receipt(image, answer)
        return answers

    async def _model(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities from the worker's coalescer; Busy for images that waited over
        serve.request_timeout_s (they never reach the model)."""
        try:
            return await self.coalesce(pixels)
        except Expired as err:
            raise Busy("model_wait", f"{err} for the model (serve.request_timeout_s)") from None

    def _receipt(self, pixels: np.ndarray, answer: Prediction) -> str:
        version = self.metadata.model.version
        receipt = Receipt(pixels, version, answer.class_id, answer.confidence, int(time.time()))
        return self.ids.issue(receipt)

    async def _run_model(self, pixels: np.ndarray) -> np.ndarray:
        MODEL_BATCH_IMAGES.observe(len(pixels))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.model_thread, self.classifier.predict_proba, pixels)

    @bentoml.api(route="/explain")
    async def explain(self, image: Path, invert: Invert = None) -> ExplainedImage:
        """Classify one image file like /classify, and show how: the 28x28 pixels the model saw,
        every conv and pooling layer's feature maps (PNG grids) with its geometry, the first conv
        layer's learned filters, and a colour upload's RGB pixels (for the page's lesson)."""
        try:
            fitted = await self.decoder.fit(image, invert, colour=True)
            explained = await self.explainer.explain(fitted.pixels, fitted.inverted, fitted.colour)
        except InputError as err:
            return err.response()
        explained.prediction_id = self._receipt(fitted.pixels, explained)
        return explained

    @bentoml.api(route="/feedback")
    async def feedback(self, items: FeedbackItems, source: Source = None) -> FeedbackStored:
        """Correct (or confirm) answers: for each image, the right class (`label`, an id or a
        name) and its `prediction_id` from /classify, /predict or /explain, or its 28x28
        `pixels`. Stored whole or not at all, for the `feedback` stage to curate into data."""
        try:
            return await self.corrections.accept(items, source, self._model)
        except InputError as err:
            return err.response()

    @metadata_app.get("/samples")
    async def get_samples(self) -> Samples:
        """Test images shipped with the model (for the page's "random test image")."""
        return self.explainer.samples

    @metadata_app.get("/metadata")
    async def get_metadata(self) -> Metadata:
        """The served model: name, version, MLflow run, accuracy, runtime, classes, input format."""
        return self.metadata


FashionClassifier.add_asgi_middleware(ApiSecurity, token=api_token())  # outermost: 401 first
FashionClassifier.add_asgi_middleware(RequestGuard)

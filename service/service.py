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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
import numpy as np
from fastapi import FastAPI
from prometheus_client import Histogram

from service import settings
from service.coalesce import Coalescer
from service.explain import ExplainedImage, Samples, load_explainer
from service.guard import RequestGuard
from service.inputs import (
    InputError,
    check_count,
    image_file_pixels,
    image_file_pixels_and_colour,
)
from service.monitoring import recorder
from service.schemas import (
    ClassifiedImage,
    Images,
    Invert,
    Metadata,
    Prediction,
    Predictions,
    predictions,
)
from service.ui import mount_ui

MAX_BATCH = 128  # images per model call; at least serve.max_images_per_request

MODEL_BATCH_IMAGES = Histogram(
    "fashion_model_batch_images",
    "Images per model call (concurrent requests batched in one worker)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
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
        self.coalesce = Coalescer(self._run_model, max_batch=MAX_BATCH, max_in_flight=1)
        # The explainer runs in a thread of its own, off the model thread /classify and /predict use.
        self.explainer = load_explainer(self.bento_model, self.class_names, self.metadata.model)
        # Records each answer off the request path (service/monitoring.py): drift report, /metrics.
        self.monitor = recorder(self.metadata.model.version, self.metadata.bento_model)
        settle_heap()

    @bentoml.api(route="/classify")
    async def classify(self, image: Path, invert: Invert = None) -> ClassifiedImage:
        """Classify one image file: grayscale, fitted to 28x28, inverted if its background is light."""
        try:
            pixels, inverted = await asyncio.to_thread(image_file_pixels, image, invert)
        except InputError as err:
            return err.response()
        (prediction,) = await self._predict(pixels[None])
        self.monitor.record("classify", pixels[None], [prediction], inverted)
        return ClassifiedImage(**dict(prediction), inverted=inverted)

    @bentoml.api(route="/predict")
    async def predict(self, images: Images) -> Predictions:
        """Classify 28x28 pixel arrays (0-255, light on dark); the answers come in input order."""
        try:
            check_count(len(images), serve.max_images_per_request)
        except InputError as err:
            return err.response()
        pixels = np.asarray(images, dtype=np.uint8)
        answers = await self._predict(pixels)
        self.monitor.record("predict", pixels, answers)
        return Predictions(predictions=answers)

    async def _predict(self, pixels: np.ndarray) -> list[Prediction]:
        return predictions(await self.coalesce(pixels), self.class_names, self.metadata.model)

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
            pixels, inverted, colour = await asyncio.to_thread(
                image_file_pixels_and_colour, image, invert
            )
            return await self.explainer.explain(pixels, inverted, colour)
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


FashionClassifier.add_asgi_middleware(RequestGuard)

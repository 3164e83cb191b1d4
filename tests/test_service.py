"""The BentoML service over real HTTP: `bentoml serve` of a workspace where the pipeline ran.

The served model is the champion `register` promoted from a 2,000-image, 1-epoch run; its
answers are compared with the evaluate stage's predictions.csv (same model, same preprocessing).
`bentoml build` and the exported Bento: tests/test_bento_build.py; the serving lock and the
image's Dockerfile: tests/test_serving_image.py.
"""

from __future__ import annotations

import io
import json
import math
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image
from service_fixtures import assert_matches_evaluate, encode, post_image, post_predict

from pipeline.core.fashion_mnist import CLASS_NAMES
from pipeline.core.params import load_params

pytest_plugins = ["service_fixtures"]  # champion, service_url, test_images, evaluated
pytestmark = pytest.mark.service


def assert_prediction(pred: dict, champion: dict) -> None:
    assert set(pred["probabilities"]) == set(CLASS_NAMES)
    assert math.isclose(sum(pred["probabilities"].values()), 1.0, abs_tol=1e-4)
    assert pred["class_name"] == CLASS_NAMES[pred["class_id"]]
    assert pred["confidence"] == max(pred["probabilities"].values())
    assert pred["model"] == {"name": champion["model_name"], "version": champion["version"]}


def test_metadata_names_the_champion(service_url, champion, pipeline_run):
    meta = requests.get(f"{service_url}/metadata", timeout=10).json()
    params = load_params(pipeline_run / "params.yaml")
    current = champion["champion"]
    assert meta["model"] == {
        "name": params.mlflow.registered_model_name,
        "version": current["version"],
    }
    assert meta["mlflow_run_id"] == current["run_id"]
    assert meta["bento_model"] == current["bento_model"]
    assert meta["val_accuracy"] == pytest.approx(current["val_accuracy"], abs=1e-4)
    assert meta["test_accuracy"] == pytest.approx(current["test_accuracy"], abs=1e-4)
    assert meta["model_sha256"] == current["model_sha256"]
    assert meta["onnx_sha256"] == current["onnx_sha256"]
    assert re.fullmatch(r"onnxruntime \d+\.\d+\.\d+", meta["runtime"])
    assert meta["class_names"] == list(CLASS_NAMES)
    assert {"classify", "predict"} <= set(meta["input"])
    assert meta["limits"] == params.serve.model_dump(
        include={"max_images_per_request", "max_upload_bytes", "request_timeout_s"}
    )


def test_probes_metrics_and_docs_stay_available(service_url):
    assert requests.get(f"{service_url}/readyz", timeout=10).status_code == 200
    assert requests.get(f"{service_url}/livez", timeout=10).status_code == 200
    assert (
        "bentoml_service_request_total" in requests.get(f"{service_url}/metrics", timeout=10).text
    )
    paths = requests.get(f"{service_url}/docs.json", timeout=10).json()["paths"]
    assert {"/classify", "/predict", "/metadata"} <= set(paths)
    assert requests.get(service_url, timeout=10).status_code == 200  # the OpenAPI UI


def test_predict_equals_evaluate_stage(service_url, champion, test_images, evaluated):
    x, _ = test_images
    resp = post_predict(service_url, x[:64])
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert len(preds) == 64
    for pred in preds:
        assert_prediction(pred, champion["champion"])
    assert_matches_evaluate(preds, evaluated, range(64))


@pytest.mark.parametrize(
    ("fmt", "mode", "options"),
    [
        ("PNG", "L", {}),
        ("PNG", "RGBA", {}),
        ("PNG", "I;16", {}),  # a 16-bit PNG: scaled to 8 bits, not clipped
        ("WEBP", "RGB", {"lossless": True}),
        ("BMP", "L", {}),
        ("GIF", "L", {}),
    ],
)
def test_classify_lossless_image_equals_evaluate_stage(
    service_url, champion, test_images, evaluated, fmt, mode, options
):
    x, _ = test_images
    for i in range(4):
        pixels = x[i].astype(np.uint16) * 257 if mode == "I;16" else x[i]
        image = Image.fromarray(pixels)
        data = encode(image if mode in ("L", "I;16") else image.convert(mode), fmt, **options)
        resp = post_image(service_url, data, f"item.{fmt.lower()}", f"image/{fmt.lower()}")
        assert resp.status_code == 200, resp.text
        assert_prediction(resp.json(), champion["champion"])
        assert_matches_evaluate([resp.json()], evaluated, [i])


def test_classify_jpeg_matches_predict_on_its_pixels(service_url, test_images):
    from pipeline.core.preprocess import image_to_pixels

    x, _ = test_images
    for i in range(4):
        data = encode(x[i], "JPEG", quality=90)
        resp = post_image(service_url, data, "item.jpg", "image/jpeg")
        assert resp.status_code == 200, resp.text
        pixels, inverted = image_to_pixels(Image.open(io.BytesIO(data)))
        assert resp.json()["inverted"] is inverted is False
        expected = post_predict(service_url, pixels[None]).json()["predictions"][0]
        assert resp.json()["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)


def test_classify_photo_is_fitted_and_inverted_automatically(service_url, test_images, evaluated):
    """A large dark-on-light RGB photo of a test item: auto-inverted, fitted to 28x28."""
    x, _ = test_images
    i = int(evaluated["confidence"].iloc[:200].idxmax())  # a clear-cut item
    photo = Image.fromarray(255 - x[i]).resize((300, 300), Image.Resampling.BICUBIC).convert("RGB")
    canvas = Image.new("RGB", (400, 300), "white")  # wider than tall: aspect ratio kept
    canvas.paste(photo, (50, 0))
    data = encode(canvas, "JPEG", quality=95)
    auto = post_image(service_url, data, "photo.jpg", "image/jpeg").json()
    forced_on = post_image(service_url, data, "photo.jpg", "image/jpeg", invert="true").json()
    forced_off = post_image(service_url, data, "photo.jpg", "image/jpeg", invert="false").json()
    assert auto["probabilities"] == forced_on["probabilities"]
    assert auto["probabilities"] != forced_off["probabilities"]
    assert (auto["inverted"], forced_on["inverted"], forced_off["inverted"]) == (True, True, False)
    assert auto["class_id"] == evaluated.loc[i, "predicted_id"]


def multipart(body: bytes, boundary: str = "b0undary") -> dict:
    return {"data": body, "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}


def _bad_requests(x: np.ndarray, limits) -> list:
    png = encode(x[0], "PNG")
    one = x[0].tolist()
    big = b"\0" * (limits.max_upload_bytes + 1)
    classify, predict = "/classify", "/predict"
    # fmt: skip on this list: a table, one case per row (name, path, request, status, words);
    # formatted, each case would take five to ten lines and the table would be lost.
    return [
        ("not an image", classify, {"files": {"image": ("a.png", b"hello, world" * 10, "image/png")}},
         415, "not a PNG"),
        ("truncated PNG", classify, {"files": {"image": ("a.png", png[: len(png) // 2], "image/png")}},
         422, "truncated"),
        ("empty upload", classify, {"files": {"image": ("a.png", b"", "image/png")}}, 422, "empty"),
        ("oversize upload", classify, {"files": {"image": ("a.png", big, "image/png")}}, 413, "limit"),
        ("TIFF", classify, {"files": {"image": ("a.tif", encode(x[0], "TIFF"), "image/tiff")}},
         415, "not a PNG"),
        ("text part", classify, {"files": {"image": ("a.txt", b"hello", "text/plain")}}, 415, "text/plain"),
        ("JSON to classify", classify, {"json": {"image": "a.png"}}, 415, "multipart/form-data"),
        ("image as text field", classify, {"data": {"image": "http://example.com/a.png"}}, 415,
         "multipart/form-data"),
        ("image as form text", classify,
         multipart(b'--b0undary\r\nContent-Disposition: form-data; name="image"\r\n\r\n'
                   b"http://example.com/a.png\r\n--b0undary--\r\n"), 400, "file upload"),
        ("no image field", classify, {"files": {"picture": ("a.png", png, "image/png")}}, 400, "`image`"),
        ("malformed multipart", classify, multipart(b"garbage"), 400, "multipart"),
        ("bad invert", classify, {"files": {"image": ("a.png", png, "image/png")}, "data": {"invert": "maybe"}},
         400, "invert"),
        ("form to predict", predict, {"data": {"images": "[]"}}, 415, "application/json"),
        ("invalid JSON", predict, {"data": b'{"images": [', "headers": {"Content-Type": "application/json"}},
         400, "JSON"),
        ("missing images", predict, {"json": {"pictures": [one]}}, 400, "images"),
        ("empty list", predict, {"json": {"images": []}}, 400, "at least 1"),
        ("27 rows", predict, {"json": {"images": [one[:27]]}}, 400, "at least 28"),
        ("29 columns", predict, {"json": {"images": [[[*row, 0] for row in one]]}}, 400, "at most 28"),
        ("flat image", predict, {"json": {"images": [x[0].ravel().tolist()]}}, 400, "list"),
        ("value 256", predict, {"json": {"images": [[[256] * 28, *one[1:]]]}}, 400, "less than or equal to 255"),
        ("value -1", predict, {"json": {"images": [[[-1] * 28, *one[1:]]]}}, 400, "greater than or equal to 0"),
        ("NaN", predict, {"data": json.dumps({"images": [[[math.nan] * 28, *one[1:]]]}),
                          "headers": {"Content-Type": "application/json"}}, 400, "finite"),
        ("fraction", predict, {"json": {"images": [[[0.5] * 28, *one[1:]]]}}, 400, "integer"),
        ("too many images", predict, {"json": {"images": [one] * (limits.max_images_per_request + 1)}},
         413, "limit"),
        ("oversize JSON", predict, {"data": big, "headers": {"Content-Type": "application/json"}}, 413, "limit"),
    ]  # fmt: skip


def test_bad_input_gets_a_4xx_naming_the_problem(service_url, test_images, pipeline_run):
    x, _ = test_images
    limits = load_params(pipeline_run / "params.yaml").serve
    failures = []
    for name, path, kwargs, status, words in _bad_requests(x, limits):
        resp = requests.post(f"{service_url}{path}", timeout=60, **kwargs)
        body = resp.json()  # every answer is JSON
        text = json.dumps(body)
        if resp.status_code != status or words.lower() not in text.lower():
            failures.append(f"{name}: {resp.status_code} {text[:300]}")
    assert not failures, "\n".join(failures)
    # ...and the server keeps serving.
    assert requests.get(f"{service_url}/readyz", timeout=10).status_code == 200
    assert post_predict(service_url, x[:2]).status_code == 200


def test_wrong_method_gets_a_json_405(service_url):
    for method, path in (("GET", "/predict"), ("PUT", "/classify"), ("DELETE", "/predict")):
        resp = requests.request(method, f"{service_url}{path}", timeout=30)
        assert resp.status_code == 405, (method, path, resp.text)
        assert resp.headers["Allow"] == "POST"
        assert f"{method} {path}: use POST" in resp.json()["error"]


def histogram(url: str, metric: str) -> tuple[float, float]:
    """(observations, observations <= 1) so far of a histogram on the service's /metrics."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    total = ones = 0.0
    for line in text.splitlines():
        if line.startswith(f"{metric}_count"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{metric}_bucket") and re.search(r'le="1(\.0)?"', line):
            ones += float(line.rsplit(" ", 1)[1])
    return total, ones


def test_concurrent_requests_are_batched_and_answered_in_order(service_url, test_images, evaluated):
    x, _ = test_images
    before = histogram(service_url, "fashion_model_batch_images")
    # 192 requests from serve.min_in_flight threads (as many as a worker always admits: this is
    # about batching, not shedding); every 4th carries 3 images, so batches mix request sizes.
    jobs = [list(range(i, i + 3)) if i % 4 == 0 else [i] for i in range(192)]

    def call(indices: list[int]) -> tuple[list[int], requests.Response]:
        return indices, post_predict(service_url, x[indices])

    with ThreadPoolExecutor(load_params().serve.min_in_flight) as pool:
        results = list(pool.map(call, jobs))
    for indices, resp in results:
        assert resp.status_code == 200, resp.text
        assert_matches_evaluate(resp.json()["predictions"], evaluated, indices)
    after = histogram(service_url, "fashion_model_batch_images")
    runs, single_image_runs = after[0] - before[0], after[1] - before[1]
    assert 0 < runs < len(jobs), "every request was its own model run"
    assert runs - single_image_runs > 0, "no model run of more than one image"

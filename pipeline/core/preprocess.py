"""The one preprocessing path, shared by training, evaluation and the service.

The saved model's first layers turn uint8 28x28 pixels into what the convolutions take
(`preprocessing_layers` in pipeline/training/model.py), so every user of the model (evaluate, the
service, `mlflow models serve`) sends raw pixels and none can scale them differently.
`fit_image` turns an arbitrary photo or drawing (any size, any mode) into a Fashion-MNIST-like
uint8 28x28 image: upright (EXIF orientation), grayscale, transparency on white, light-on-dark,
fitted to 28x28 with its aspect ratio kept; and, for the page's lesson, the same in colour.

Bounded memory: apart from the decoded image itself, a large image is never copied whole. Every
step before the shrinking (orientation, 16-bit scaling, transparency, grayscale, inverting) works
pixel by pixel, so it runs on horizontal bands of about a megapixel, each box-reduced at once by the
factor Pillow's `resize(..., reducing_gap=3)` would use; the reduced image is then resized with
Lanczos exactly as that call does. The result is identical to doing each step on the whole image
(tests/test_preprocess.py holds it to the pixels recorded before). A large JPEG is decoded at 1/2,
1/4 or 1/8 scale by libjpeg itself (`shrink_on_load`), still at least 3x the final size: those
results differ slightly from a full-size decode (docs/serving.md, "Uploads in bounded memory").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from pipeline.core.fashion_mnist import IMAGE_SIZE

REDUCING_GAP = 3.0  # box-reduce to at least 3x the final size, then Lanczos (Pillow's reducing_gap)
BAND_PIXELS = 1 << 20  # pixels per band of a large image
BAND_BYTES_PER_PIXEL = (
    24  # a band's working copies (crop, upright, RGBA on white, L, RGB): measured
)
SIXTEEN_BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N")
# EXIF orientation -> the transposition that makes the image upright (as ImageOps.exif_transpose).
ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = {
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_270,
}
_INVERSE = {
    Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270,
    Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class Fitted:
    """An image fitted to the model: `pixels` uint8 (28, 28), light on dark; `inverted`: whether
    it had to be inverted to get there; `colour`: uint8 (28, 28, 3) when asked for and the image
    has colour bands, else None."""

    pixels: np.ndarray
    inverted: bool
    colour: np.ndarray | None = None


def fitted_size(width: int, height: int) -> tuple[int, int]:
    """The size an image of width x height takes in the 28x28 frame: longer side 28."""
    scale = IMAGE_SIZE / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def reduce_factors(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """The box-reduction factors Pillow's resize(target, reducing_gap=REDUCING_GAP) applies."""
    return (
        int(size[0] / target[0] / REDUCING_GAP) or 1,
        int(size[1] / target[1] / REDUCING_GAP) or 1,
    )


def _jpeg_draft(image: Image.Image) -> tuple[tuple[int, int], int]:
    """The size `shrink_on_load` asks libjpeg for (REDUCING_GAP times the fitted size) and the
    scale (1, 2, 4 or 8) Image.draft then decodes at: the largest that keeps at least that size."""
    target = fitted_size(*image.size)
    want = (math.ceil(target[0] * REDUCING_GAP), math.ceil(target[1] * REDUCING_GAP))
    fits = min(image.width // want[0], image.height // want[1])
    return want, next((s for s in (8, 4, 2) if fits >= s), 1)


def _undecoded_jpeg(image: Image.Image) -> bool:
    return image.format == "JPEG" and bool(getattr(image, "tile", None)) and not image.decoderconfig


def shrink_on_load(image: Image.Image) -> None:
    """Ask a not yet decoded JPEG to decode at 1/2, 1/4 or 1/8 scale (`_jpeg_draft`): libjpeg
    scales while decoding, in less memory and time. Other formats have no such mode; a decoded
    image is left as it is."""
    if _undecoded_jpeg(image):
        image.draft(None, _jpeg_draft(image)[0])


def decode_bytes(image: Image.Image) -> int:
    """About how much memory `fit_image` needs for an opened, not yet decoded image: its decoded
    pixels as Pillow stores them (1 byte for 1/L/P, 2 for 16-bit gray, 4 for every other mode;
    a JPEG at its `shrink_on_load` scale), libwebp's frame canvases (4 per pixel, several), the
    coefficients a progressive JPEG keeps for the whole image (2 bytes each), and the bands.
    Call it before `shrink_on_load`: a drafted JPEG reports its reduced size."""
    width, height = image.size
    if _undecoded_jpeg(image):
        scale = _jpeg_draft(image)[1]
        width, height = -(-width // scale), -(-height // scale)
    per_pixel = 1 if image.mode in ("1", "L", "P") else 2 if image.mode.startswith("I;16") else 4
    if image.format == "WEBP":  # measured: about 16 bytes per pixel at the peak
        per_pixel = 16
    total = width * height * per_pixel
    if image.format == "JPEG" and image.info.get("progressive"):
        total += _jpeg_coefficient_bytes(image)
    return total + min(width * height, BAND_PIXELS) * BAND_BYTES_PER_PIXEL


def _jpeg_coefficient_bytes(image: Image.Image) -> int:
    """A progressive JPEG's DCT coefficients, kept whole until the last scan: 2 bytes per pixel
    of every component at its own sampling (full size, whatever scale it is decoded at)."""
    layers = getattr(image, "layer", None) or [(0, 1, 1, 0)] * len(image.getbands())
    h_max = max(h for _, h, _, _ in layers)
    v_max = max(v for _, _, v, _ in layers)
    w, h = image.size
    return sum(2 * -(-w * hs // h_max) * -(-h * vs // v_max) for _, hs, vs, _ in layers)


def has_light_background(gray: Image.Image | np.ndarray) -> bool:
    """True when the image's border is mostly light, i.e. a dark object on a light background."""
    a = np.asarray(gray)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return _light(border)


def _light(border: np.ndarray) -> bool:
    return float(np.median(border)) > 127


def to_8bit(image: Image.Image) -> Image.Image:
    """16- and 32-bit integer images (e.g. 16-bit PNGs) scaled to 8 bits (PIL's convert clips
    them): round(value / 257) in integers, no float copy."""
    if image.mode not in SIXTEEN_BIT:
        return image
    a = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
    # (2a + 257) // 514 == round(a / 257): a / 257 is never exactly halfway (257 is odd).
    return Image.fromarray(((2 * a + 257) // 514).astype(np.uint8))


def flatten(image: Image.Image) -> Image.Image:
    """8-bit and without transparency: transparent pixels put on white. Pixel by pixel."""
    image = to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels have no colour of their own: put the picture on white first.
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, rgba)
    return image


def has_colour(image: Image.Image) -> bool:
    """Whether an image has colour bands (a palette counts): the lesson shows its RGB channels."""
    return image.mode == "P" or len(image.getbands()) >= 3


def orientation(image: Image.Image) -> Image.Transpose | None:
    """The transposition its EXIF orientation asks for (None: upright already)."""
    return ORIENTATIONS.get(image.getexif().get(0x0112, 1))


def source_box(
    box: tuple[int, int, int, int], method: Image.Transpose | None, size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """The box of the stored image (of `size`) that becomes `box` of the upright image after
    `method`: crop(source_box).transpose(method) == transpose(method).crop(box)."""
    if method is None:
        return box
    inverse = _INVERSE.get(method, method)  # the flips, TRANSPOSE and TRANSVERSE undo themselves
    upright = (size[1], size[0]) if method in _SWAPS_SIDES else size
    w, h = upright
    x0, y0, x1, y1 = box
    corners = [_transposed_point(x, y, inverse, w, h) for x, y in ((x0, y0), (x1, y1))]
    xs, ys = sorted(c[0] for c in corners), sorted(c[1] for c in corners)
    return xs[0], ys[0], xs[1], ys[1]


def _transposed_point(x: int, y: int, method: Image.Transpose, w: int, h: int) -> tuple[int, int]:
    """Where the pixel-edge point (x, y) of a w x h image lands after `method`."""
    return {
        Image.Transpose.FLIP_LEFT_RIGHT: (w - x, y),
        Image.Transpose.FLIP_TOP_BOTTOM: (x, h - y),
        Image.Transpose.ROTATE_180: (w - x, h - y),
        Image.Transpose.TRANSPOSE: (y, x),
        Image.Transpose.TRANSVERSE: (h - y, w - x),
        Image.Transpose.ROTATE_90: (y, w - x),
        Image.Transpose.ROTATE_270: (h - y, x),
    }[method]


def _centred(image: Image.Image) -> np.ndarray:
    """A fitted L or RGB image pasted in the middle of a black 28x28 frame."""
    canvas = Image.new(image.mode, (IMAGE_SIZE, IMAGE_SIZE), 0)
    canvas.paste(image, ((IMAGE_SIZE - image.width) // 2, (IMAGE_SIZE - image.height) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def fit_image(image: Image.Image, invert: bool | None = None, colour: bool = False) -> Fitted:
    """Any PIL image -> Fitted: light object on a dark background like Fashion-MNIST.

    invert=None inverts automatically when the border is mostly light; True/False force it.
    colour=True also gives the colour version (None for an image without colour bands).
    """
    shrink_on_load(image)
    image.load()
    method = orientation(image)
    upright = image.size[::-1] if method in _SWAPS_SIDES else image.size
    target = fitted_size(*upright)
    factors = reduce_factors(upright, target)
    modes = ["L", "RGB"] if colour and has_colour(image) else ["L"]
    if factors == (1, 1):  # small: the whole image at once
        flat = flatten(ImageOps.exif_transpose(image))
        parts = [flat.convert(mode) for mode in modes]
        invert = has_light_background(parts[0]) if invert is None else invert
        fitted = [
            (ImageOps.invert(part) if invert else part).resize(target, Image.Resampling.LANCZOS)
            for part in parts
        ]
    else:
        if invert is None:
            invert = _light(_upright_border(image, method, upright))
        fitted = _fit_in_bands(image, method, upright, target, factors, invert, modes)
    return Fitted(
        _centred(fitted[0]), bool(invert), _centred(fitted[1]) if len(fitted) > 1 else None
    )


def _upright_part(
    image: Image.Image, method: Image.Transpose | None, box: tuple[int, int, int, int]
) -> Image.Image:
    """`box` of the upright image, flattened, without making the whole image upright."""
    part = image.crop(source_box(box, method, image.size))
    return flatten(part.transpose(method) if method is not None else part)


def _upright_border(
    image: Image.Image, method: Image.Transpose | None, upright: tuple[int, int]
) -> np.ndarray:
    """The grayscale pixels of the upright image's four edges (has_light_background's input)."""
    w, h = upright
    edges = [(0, 0, w, 1), (0, h - 1, w, h), (0, 0, 1, h), (w - 1, 0, w, h)]
    return np.concatenate(
        [np.asarray(_upright_part(image, method, e).convert("L")).ravel() for e in edges]
    )


def _fit_in_bands(
    image: Image.Image,
    method: Image.Transpose | None,
    upright: tuple[int, int],
    target: tuple[int, int],
    factors: tuple[int, int],
    invert: bool,
    modes: list[str],
) -> list[Image.Image]:
    """A large image fitted to `target` in each of `modes`, a band of rows at a time: every band
    made upright, flattened, converted, inverted and box-reduced, then the reduced image resized
    with Lanczos as Pillow's resize(target, reducing_gap=REDUCING_GAP) does after its reduce."""
    w, h = upright
    fx, fy = factors
    reduced = [Image.new(mode, (math.ceil(w / fx), math.ceil(h / fy))) for mode in modes]
    rows = max(fy, BAND_PIXELS // w // fy * fy)  # a multiple of fy: bands reduce like the whole
    for top in range(0, h, rows):
        flat = _upright_part(image, method, (0, top, w, min(h, top + rows)))
        for mode, out in zip(modes, reduced, strict=True):
            part = flat.convert(mode)
            out.paste((ImageOps.invert(part) if invert else part).reduce(factors), (0, top // fy))
    box = (0, 0, w / fx, h / fy)  # what the reduce leaves for Lanczos, in reduced pixels
    return [out.resize(target, Image.Resampling.LANCZOS, box) for out in reduced]


def image_to_pixels(image: Image.Image, invert: bool | None = None) -> tuple[np.ndarray, bool]:
    """Any PIL image -> (uint8 (28, 28), inverted): `fit_image` without the colour version."""
    fitted = fit_image(image, invert)
    return fitted.pixels, fitted.inverted


def image_to_colour_pixels(image: Image.Image, inverted: bool) -> np.ndarray | None:
    """A colour image -> uint8 (28, 28, 3): the fitting of `image_to_pixels` kept in colour,
    inverted as it inverted the grayscale (the /ui lesson on RGB channels). None for an image
    without colour bands (grayscale, black and white)."""
    return fit_image(image, inverted, colour=True).colour

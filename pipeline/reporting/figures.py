"""Evaluation pictures, drawn with matplotlib's object API (no pyplot state, no display needed)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from pipeline.core.fashion_mnist import CLASS_NAMES


def confusion_figure(matrix: np.ndarray) -> Figure:
    """Heat map of a 10x10 confusion matrix (rows: true class, columns: predicted)."""
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(CLASS_NAMES))
    ax.set_xticks(ticks, CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(ticks, CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(v),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if v > threshold else "black",
        )
    ax.set_title("Confusion matrix (test split)")
    return fig


def mistakes_figure(
    images: np.ndarray, y_true: np.ndarray, proba: np.ndarray, count: int = 24
) -> Figure:
    """The `count` wrong predictions the model was most confident about."""
    pred = proba.argmax(axis=1)
    wrong = np.flatnonzero(pred != y_true)
    worst = wrong[np.argsort(-proba[wrong, pred[wrong]])][:count]
    cols = 6
    rows = max(1, -(-len(worst) // cols))
    fig = Figure(figsize=(cols * 1.9, rows * 2.2), layout="constrained")
    fig.suptitle("Most confident mistakes: predicted (confidence) / true")
    for k, i in enumerate(worst):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(images[i], cmap="gray")
        ax.set_title(
            f"{CLASS_NAMES[pred[i]]} ({proba[i, pred[i]]:.2f})\n/ {CLASS_NAMES[y_true[i]]}",
            fontsize=7,
        )
        ax.axis("off")
    return fig


def filters_figure(kernels: np.ndarray) -> Figure:
    """First conv layer's kernels, shape (f, f, 1, filters): the edge and blob detectors it learned."""
    n = kernels.shape[-1]
    cols = min(n, 8)
    rows = -(-n // cols)
    fig = Figure(figsize=(cols * 1.2, rows * 1.3), layout="constrained")
    fig.suptitle(f"First conv layer: {n} learned {kernels.shape[0]}x{kernels.shape[1]} filters")
    for k in range(n):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(kernels[:, :, 0, k], cmap="RdBu_r")
        ax.axis("off")
    return fig


def feature_maps_figure(image: np.ndarray, maps: np.ndarray, title: str) -> Figure:
    """One input image beside the activations (h, w, channels) the first conv layer produced from it."""
    n = maps.shape[-1]
    cols = min(n + 1, 9)
    rows = -(-(n + 1) // cols)
    fig = Figure(figsize=(cols * 1.2, rows * 1.3), layout="constrained")
    fig.suptitle(title)
    ax = fig.add_subplot(rows, cols, 1)
    ax.imshow(image, cmap="gray")
    ax.set_title("input", fontsize=7)
    ax.axis("off")
    for k in range(n):
        ax = fig.add_subplot(rows, cols, k + 2)
        ax.imshow(maps[:, :, k], cmap="viridis")
        ax.axis("off")
    return fig

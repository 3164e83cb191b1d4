"""drift.html: the report for a person, from templates/drift.html.j2 (jinja2, autoescaped).

The page is one self-contained file (inline CSS, the figures as PNG data URIs), so it can be
mailed or archived as it is. Everything in it comes from the DriftReport; the template holds the
words and the markup, this module the figures and the notes beside the tests.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from pipeline.core.fashion_mnist import CLASS_NAMES
from pipeline.monitor.report import DriftReport

TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class Figure:
    """One image of the page: its alt text and its PNG, base64-encoded."""

    alt: str
    png_base64: str


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode()


def figures(report: DriftReport) -> list[Figure]:
    """Histograms of each numeric feature and the class shares, reference vs current."""
    if report.compared is None:
        return []
    from matplotlib.figure import Figure as PlotFigure  # only when there is something to draw

    features, compared = report.features, report.compared
    numeric = [n for n, f in features.items() if f.test == "ks"]
    fig = PlotFigure(figsize=(4 * len(numeric), 3.2), layout="constrained")
    for ax, name in zip(fig.subplots(1, len(numeric)), numeric, strict=True):
        ref, cur = compared.reference[name], compared.current[name]
        bins = np.histogram_bin_edges(np.concatenate([ref, cur]), bins=30)
        ax.hist(ref, bins=bins, density=True, alpha=0.5, label="reference")
        ax.hist(cur, bins=bins, density=True, alpha=0.5, label="current")
        ax.set_title(f"{name}{' (DRIFTED)' if features[name].drifted else ''}", fontsize=10)
        ax.legend(fontsize=8)
    out = [Figure("feature histograms", _png(fig))]
    if "predicted_class" in features:
        shares = features["predicted_class"]
        fig = PlotFigure(figsize=(9, 3.5), layout="constrained")
        ax = fig.subplots()
        x = np.arange(len(CLASS_NAMES))
        ax.bar(x - 0.2, [shares.reference[c] for c in CLASS_NAMES], 0.4, label="reference")
        ax.bar(x + 0.2, [shares.current[c] for c in CLASS_NAMES], 0.4, label="current")
        ax.set_xticks(x, CLASS_NAMES, rotation=30, ha="right")
        ax.set_ylabel("share of predictions")
        ax.set_title("predicted class")
        ax.legend()
        out.append(Figure("predicted class shares", _png(fig)))
    return out


def notes_beside_the_tests(report: DriftReport) -> list[str]:
    """Sentences on what the tests do not judge: the low-confidence share, inverted uploads,
    records left out of the output tests, skipped lines; and where to read what to do next."""
    notes = []
    if low := report.low_confidence_share:
        notes.append(
            f"Answers with confidence below {low.threshold}: {low.current:.1%} "
            f"(reference {low.reference:.1%})."
        )
    if report.classify_inverted_share is not None:
        notes.append(
            f"/classify uploads inverted (light background): {report.classify_inverted_share:.1%}."
        )
    if report.model.other_models_records:
        notes.append(
            f"{report.model.other_models_records} records of other models are in the input "
            "tests only."
        )
    if report.sources and report.sources.unreadable_lines:
        notes.append(f"{report.sources.unreadable_lines} unreadable record lines were skipped.")
    notes.append(
        'What to do with a verdict: docs/monitoring.md, "From a drift verdict to retraining".'
    )
    return notes


@cache
def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every value is escaped unless marked safe: none is
        undefined=jinja2.StrictUndefined,  # a misspelt name fails instead of rendering empty
        keep_trailing_newline=True,
    )


def render_html(report: DriftReport) -> str:
    """The page: verdict, window, the feature table, the notes, the figures."""
    return (
        _environment()
        .get_template("drift.html.j2")
        .render(
            report=report,
            endpoints=json.dumps(report.endpoints),
            notes=notes_beside_the_tests(report),
            figures=figures(report),
        )
    )

"""PNG plots made from records only (matplotlib Figures drawn by the Agg canvas: no display, no
pyplot state, no global backend switch).

`new_figure` and `save_png` are the one way the package makes a PNG (`bench.report.compare` plots with them too).

* `plot_quality_speed`: a quality metric against reranking speed, one point per quality record
  (dataset × reranker), one colour per reranker.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from .. import lazy
from ..errors import BenchError
from ..io import atomic_write_bytes
from ..metrics import by_metric, parse_metric
from ..records import QualityRecord


def new_figure(**kwargs):
    """A matplotlib Figure (`kwargs` as Figure takes them) with its own Agg canvas: drawing it touches
    neither pyplot's figure list nor the process-wide backend, and needs no display."""
    fig = lazy.matplotlib_figure.Figure(**kwargs)
    lazy.matplotlib_agg.FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | Path) -> Path:
    """Render to PNG bytes and write atomically (a half-written PNG never appears)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def plot_quality_speed(records: Iterable[QualityRecord], path: str | Path, *, metric: str = "nDCG@10",
                       title: str | None = None) -> Path:
    """Quality against reranking speed from quality records (kind 'quality' with ``metrics[metric]``,
    `metric` in any spelling, and ``timings.rerank_pairs_per_s``); first-stage-only records have no
    reranking speed and are left out. One colour per reranker label, one marker per dataset."""
    wanted = parse_metric(metric)
    points: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for rec in records:
        if rec.kind != "quality":
            continue
        speed = rec.timings.rerank_pairs_per_s
        value = by_metric(rec.metrics).get(wanted)
        if speed is None or value is None:
            continue
        points[rec.system.label].append((float(speed), float(value), rec.dataset.label))
    if not points:
        raise BenchError(f"no quality record with metrics[{str(wanted)!r}] and timings.rerank_pairs_per_s to plot")
    datasets = sorted({d for pts in points.values() for _, _, d in pts})
    markers = dict(zip(datasets, "osD^v<>phX*" * 3))
    fig = new_figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for i, (label, pts) in enumerate(sorted(points.items())):
        color = f"C{i % 10}"
        for speed, value, dataset in pts:
            ax.scatter([speed], [value], color=color, marker=markers[dataset], s=50)
        ax.scatter([], [], color=color, marker="o", label=label)
    for dataset, marker in markers.items():
        ax.scatter([], [], color="grey", marker=marker, label=f"dataset: {dataset}")
    ax.set_xscale("log")
    ax.set_xlabel("reranking speed (pairs / s, as measured in the run)")
    ax.set_ylabel(str(wanted))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"{wanted} against reranking speed")
    return save_png(fig, path)

"""PNG plots made from records only (matplotlib Figures drawn by the Agg canvas: no display, no
pyplot state, no global backend switch).

`_figure` and `_save` are the one way the package makes a PNG (`bench.compare` plots with them too).

* `plot_throughput`: pairs/s against batch size (baselines, pairs per batch) and token budget (the
  fast engine, tokens per batch), one line per engine variant × precision, log-2 x axis; one panel
  per kind of x axis because pairs and tokens are different units.
* `plot_quality_speed`: a quality metric against reranking speed, one point per quality record
  (dataset × reranker), one colour per reranker.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from . import lazy
from .errors import BenchError
from .io import atomic_write_bytes
from .metrics import by_metric, parse_metric


def _pyplot():
    """pyplot with the Agg backend, for `plot_throughput` only until it moves onto `_figure`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(**kwargs):
    """A matplotlib Figure (`kwargs` as Figure takes them) with its own Agg canvas: drawing it touches
    neither pyplot's figure list nor the process-wide backend, and needs no display."""
    fig = lazy.matplotlib_figure.Figure(**kwargs)
    lazy.matplotlib_agg.FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    """Render to PNG bytes and write atomically (a half-written PNG never appears)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def plot_throughput(records: Sequence[Mapping] | Mapping, path: str | Path, *, title: str | None = None) -> Path:
    """Throughput against batch size / token budget from throughput records (failed cells are left out)."""
    if isinstance(records, Mapping):
        records = [records]
    series: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for rec in records:
        if rec.get("kind") != "throughput":
            raise BenchError(f"{rec.get('_path', 'record')}: kind {rec.get('kind')!r}, expected 'throughput'")
        many_lengths = len({c["max_length"] for c in rec["cells"]}) > 1
        for c in rec["cells"]:
            if c.get("error"):
                continue
            axis = "token budget (tokens per batch)" if c.get("token_budget") else "batch size (pairs per batch)"
            x = c.get("token_budget") or c.get("batch_size")
            name = f"{c['variant']} {c.get('dtype_resolved', c['dtype'])}"
            if many_lengths:
                name += f" L{c['max_length']}"
            series[(axis, name)][x] = max(c["pairs_per_s"], series[(axis, name)].get(x, 0.0))
    if not series:
        raise BenchError("no successful throughput cells to plot")
    axes_names = sorted({axis for axis, _ in series})
    plt = _pyplot()
    # one y scale for both panels, from 0, so engines compare at a glance across panels
    fig, axes = plt.subplots(1, len(axes_names), figsize=(6.5 * len(axes_names), 4.5), squeeze=False, sharey=True)
    for ax, axis in zip(axes[0], axes_names):
        for (a, name), points in sorted(series.items()):
            if a != axis:
                continue
            xs = sorted(points)
            ax.plot(xs, [points[x] for x in xs], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(axis)
        ax.set_ylabel("pairs / s (end to end, median)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    # Limits once all panels are drawn: setting them per panel would freeze the shared scale at the
    # first panel's data and cut off faster engines in the others.
    top = max(v for points in series.values() for v in points.values())
    axes[0][0].set_ylim(0, top * 1.08)
    rec = records[0]
    device = (rec.get("environment") or {}).get("device", {}).get("device", rec.get("device"))
    fig.suptitle(title or f"{rec['model']['ref']} on {device}: {rec['pairs'].get('n_pairs')} pairs")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_quality_speed(records: Iterable[Mapping], path: str | Path, *, metric: str = "nDCG@10",
                       title: str | None = None) -> Path:
    """Quality against reranking speed from quality records (kind 'quality' with ``metrics[metric]``,
    `metric` in any spelling, and ``timings.rerank_pairs_per_s``); first-stage-only records have no
    reranking speed and are left out. One colour per reranker label, one marker per dataset."""
    wanted = parse_metric(metric)
    points: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for rec in records:
        if rec.get("kind") != "quality":
            continue
        speed = (rec.get("timings") or {}).get("rerank_pairs_per_s")
        value = by_metric(rec.get("metrics") or {}).get(wanted)
        if speed is None or value is None:
            continue
        label = (rec.get("system") or {}).get("label", "?")
        dataset = (rec.get("dataset") or {}).get("label") or (rec.get("dataset") or {}).get("name", "?")
        points[label].append((float(speed), float(value), dataset))
    if not points:
        raise BenchError(f"no quality record with metrics[{str(wanted)!r}] and timings.rerank_pairs_per_s to plot")
    datasets = sorted({d for pts in points.values() for _, _, d in pts})
    markers = dict(zip(datasets, "osD^v<>phX*" * 3))
    fig = _figure(figsize=(7, 4.5))
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
    return _save(fig, path)

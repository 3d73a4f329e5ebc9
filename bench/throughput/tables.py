"""What a sweep's records look like to a reader: the throughput and fidelity tables, the throughput plot.

Made from records only (never from live objects), so a table or plot can be made again from the
files a sweep wrote.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from .. import lazy
from ..report import plots
from ..report.formats import md_escape
from ..errors import BenchError
from ..records import FidelityComparison, ThroughputRecord

TABLE_COLUMNS = ["engine", "dtype", "batch / budget", "max_len", "pairs", "pairs/s", "min–max", "n", "q/s@k",
                 "p50 ms", "p95 ms", "peak mem", "padding", "TFLOP/s", "% ceiling", "vs plain"]


def spread(cell) -> tuple[float, float, int] | None:
    """(slowest, fastest) pairs/s over a cell's timed repeats and how many there were."""
    rates = [cell.n_pairs / s for s in cell.seconds if s and s > 0] if cell.n_pairs else []
    return (min(rates), max(rates), len(rates)) if rates else None


def fastest_line(record: ThroughputRecord) -> str:
    """The fastest cell, ranked only when its range of repeats does not overlap the runner-up's."""
    cells = sorted((c for c in record.cells if not c.error and c.pairs_per_s and spread(c)),
                   key=lambda c: c.pairs_per_s, reverse=True)
    if len(cells) < 2:
        return ""
    (first, second), name = cells[:2], lambda c: f"{c.label}"
    if spread(first)[0] <= spread(second)[1]:
        return (f"Not ranked: {name(first)} and {name(second)} overlap (min–max over their repeats); "
                "more repeats, or a quieter machine, would tell them apart.")
    return f"Fastest: {name(first)} (its slowest repeat beats every repeat of {name(second)})."


def columns_legend(record: ThroughputRecord) -> str:
    """One line that says what each column of the throughput table holds, and why a peak memory is –."""
    missing = list(dict.fromkeys(c.peak_memory.get("what") for c in record.cells
                                 if not c.error and c.peak_memory.get("bytes") is None and c.peak_memory.get("what")))
    mem = ("peak mem: on CUDA torch's peak allocation in the cell (weights and activations), on a CPU the "
           "process's peak resident memory")
    if missing:
        mem += f"; – where it was not measured ({'; '.join(missing)})"
    return ("Columns: engine (and its options); dtype as run; batch / budget: pairs per batch, or tokens per batch "
            "(token budget); max_len: tokens per pair; pairs: pairs timed per repeat; pairs/s: median over the n "
            "timed repeats, min–max beside it; q/s@k: queries of k pairs per second; p50/p95 ms: one query's "
            f"latency; {mem}; padding: share of computed tokens that are padding; TFLOP/s: useful FLOPs per second; "
            "% ceiling: that rate against the device's measured matmul rate; vs plain: speed-up over the plain "
            "transformers fp32 cell of the same max_len; – : not measured or not applicable.")


def throughput_frame(record: ThroughputRecord):
    """The throughput table as a DataFrame (text cells), one row per cell, with the model named."""
    frame = lazy.pd.DataFrame(table_rows(record), columns=TABLE_COLUMNS)
    frame.insert(0, "model", record.model.ref)
    return frame


def table_rows(record: ThroughputRecord) -> list[list[str]]:
    rows = []
    for c in record.cells:
        size = f"{c.token_budget} tok" if c.token_budget else f"{c.batch_size} pairs"
        if c.error:
            rows.append([c.variant, c.dtype, size, str(c.max_length), "", c.error[:60]] + [""] * (len(TABLE_COLUMNS) - 6))
            continue
        mem = c.peak_memory.get("bytes")
        lo_hi = spread(c)
        rows.append([
            c.variant, c.dtype_resolved or c.dtype, size, str(c.max_length), str(c.n_pairs),
            _rate(c.pairs_per_s), f"{_rate(lo_hi[0])}–{_rate(lo_hi[1])}" if lo_hi else "–",
            str(lo_hi[2]) if lo_hi else "–", _rate(c.queries_per_s), _fmt(c.latency_ms.get("p50"), "{:.1f}"),
            _fmt(c.latency_ms.get("p95"), "{:.1f}"), _fmt(mem and mem / 2**30, "{:.2f} GiB"),
            _fmt(None if c.padding_fraction is None else 100 * c.padding_fraction, "{:.1f}%"),
            _fmt(c.useful_tflop_per_s, "{:.3g}"),
            _fmt(None if c.ceiling_share is None else 100 * c.ceiling_share, "{:.1f}%"),
            _fmt(c.speedup_vs_plain, "{:.2f}×"),
        ])
    return rows


def _fmt(value, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


def _rate(value: float) -> str:
    """Whole numbers with separators from 100 up; three significant figures below (CPU rates)."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _device(record: ThroughputRecord) -> str:
    """The device the environment saw (its name), else the one the sweep was asked for."""
    return record.environment.device.get("device", record.device)


def throughput_table(record: ThroughputRecord) -> str:
    """The sweep as a Markdown table, with a header line naming model, device, pairs and ceiling."""
    pairs, ceil = record.pairs, record.ceiling
    mean_tok = ", ".join(f"{v:.1f} (L{k})" for k, v in pairs.mean_tokens_per_pair.items())
    tflops = float("nan") if ceil.tflop_per_s is None else ceil.tflop_per_s
    head = (f"Model {record.model.ref}{' (untrained)' if record.model.untrained else ''} on {_device(record)}; "
            f"{pairs.n_pairs} pairs, {pairs.n_queries} queries × k={pairs.k}"
            f" from {pairs.collection}; mean tokens per pair {mean_tok or '?'}; "
            f"ceiling {tflops:.3g} TFLOP/s ({ceil.dtype} matmul, measured).")
    lines = [head, "", _row(TABLE_COLUMNS), "|" + "---|" * len(TABLE_COLUMNS)]
    lines += [_row(r) for r in table_rows(record)] + ["", columns_legend(record)]
    lines += family_rates(record)
    ranked = fastest_line(record)
    return "\n".join(lines + ([ranked] if ranked else [])) + "\n"


def family_rates(record: ThroughputRecord) -> list[str]:
    """A family's own counters per second (duoT5: ordered pairs compared, ``duo_pairs/s``), one line
    per cell that has them; pairs/s above counts the candidates reranked, as for every family."""
    lines = []
    for c in record.cells:
        rates = {} if c.error else (c.model_extra or {}).get("counters_per_s") or {}
        if rates:
            lines.append(f"{c.label}: " + ", ".join(f"{k}/s {_rate(v)}" for k, v in sorted(rates.items())))
    return ["", *lines] if lines else []


def _row(cells: Sequence[str]) -> str:
    """One Markdown table row, each cell escaped (a `|` in an engine's options stays in its cell)."""
    return "| " + " | ".join(map(md_escape, cells)) + " |"


def fidelity_table(comparisons: Sequence[FidelityComparison]) -> str:
    """Fidelity as a Markdown table (one row per compared cell)."""
    sets = any(c.has("pairs_set") for c in comparisons)  # comparisons on more than one set of pairs
    head = (["pairs"] if sets else []) + [
        "cell", "vs (fp32)", "queries", "max |Δ|", "mean |Δ|", "max |Δ| / σ(ref)", "τ median", "τ min",
        "top-10 identical", "nDCG@10 ref → cell (Δ)"]
    lines = [_row(head), "|" + "---|" * len(head)]
    for c in comparisons:
        tau, nd, top = c.kendall_tau, c.ndcg_at_10 or {}, c.top10_identical
        nd_txt = (f"{nd['reference']:.4f} → {nd['candidate']:.4f} ({nd['delta']:+.4f})"
                  if nd.get("delta") is not None else "–")
        lines.append(_row(([c.pairs_set or ""] if sets else []) + [
            c.cell, c.reference, str(c.n_queries), f"{c.max_abs_diff:.2e}", f"{c.mean_abs_diff:.2e}",
            "–" if c.max_abs_diff_over_std is None else f"{c.max_abs_diff_over_std:.3g}",
            "–" if tau["median"] is None else f"{tau['median']:.4f}", "–" if tau["min"] is None else f"{tau['min']:.4f}",
            "–" if top is None else f"{100 * top:.1f}%", nd_txt]))
    return "\n".join(lines) + "\n"


#: Line styles of one engine's series (dtypes, options, lengths), in order of appearance.
STYLES = ["-", "--", ":", "-."]
MARKERS = "osD^v<>ph"


def plot_throughput(records: Sequence[ThroughputRecord] | ThroughputRecord, path: str | Path, *,
                    title: str | None = None) -> Path:
    """Throughput against batch size / token budget from throughput records (failed cells are left out).

    One colour per engine in every panel (the fast engine and each baseline drawn the same way: a
    line with markers and error bars), one line style per dtype / options / max_length of an engine;
    each point is the median of the cell's timed repeats with their min–max as an error bar; the
    x axis names the batch sizes and budgets measured, as whole numbers."""
    if isinstance(records, ThroughputRecord):
        records = [records]
    series: dict[tuple[str, str], dict[int, tuple[float, float, float]]] = defaultdict(dict)
    engine_of: dict[str, str] = {}
    for rec in records:
        if not isinstance(rec, ThroughputRecord):
            raise BenchError(f"{getattr(rec, 'path', None) or 'record'}: kind {getattr(rec, 'kind', None)!r}, "
                             "expected 'throughput'")
        many_lengths = len({c.max_length for c in rec.cells}) > 1
        for c in rec.cells:
            if c.error or not c.pairs_per_s:
                continue
            axis = "token budget (tokens per batch)" if c.token_budget else "batch size (pairs per batch)"
            x = c.token_budget or c.batch_size
            name = f"{c.variant} {c.dtype_resolved or c.dtype}"
            if many_lengths:
                name += f" L{c.max_length}"
            engine_of[name] = c.engine
            lo_hi = spread(c)
            low, high = (lo_hi[0], lo_hi[1]) if lo_hi else (c.pairs_per_s, c.pairs_per_s)
            if c.pairs_per_s >= series[(axis, name)].get(x, (0.0,))[0]:
                series[(axis, name)][x] = (c.pairs_per_s, min(low, c.pairs_per_s), max(high, c.pairs_per_s))
    if not series:
        raise BenchError("no successful throughput cells to plot")
    engines = list(dict.fromkeys(engine_of[name] for _, name in sorted(series)))
    colour = {engine: f"C{i % 10}" for i, engine in enumerate(engines)}
    style: dict[str, tuple[str, str]] = {}
    for name in dict.fromkeys(name for _, name in sorted(series)):
        k = sum(1 for other in style if engine_of[other] == engine_of[name])
        style[name] = (STYLES[k % len(STYLES)], MARKERS[k % len(MARKERS)])
    axes_names = sorted({axis for axis, _ in series})
    # one y scale for both panels, from 0, so engines compare at a glance across panels
    fig = plots.new_figure(figsize=(6.5 * len(axes_names), 4.5))
    axes = fig.subplots(1, len(axes_names), squeeze=False, sharey=True)
    for ax, axis in zip(axes[0], axes_names):
        xs_all: set[int] = set()
        for (a, name), points in sorted(series.items()):
            if a != axis:
                continue
            xs = sorted(points)
            xs_all.update(xs)
            med = [points[x][0] for x in xs]
            err = [[points[x][0] - points[x][1] for x in xs], [points[x][2] - points[x][0] for x in xs]]
            linestyle, marker = style[name]
            ax.errorbar(xs, med, yerr=err, color=colour[engine_of[name]], linestyle=linestyle, marker=marker,
                        capsize=0, elinewidth=1.2, label=name)
        ax.set_xscale("log", base=2)
        ticks = sorted(xs_all)
        ax.set_xticks(ticks, labels=[f"{int(x):,}" for x in ticks])
        ax.xaxis.set_minor_locator(lazy.matplotlib_ticker.NullLocator())
        ax.set_xlabel(axis)
        ax.set_ylabel("pairs / s (median; bar: min–max of repeats)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    # Limits once all panels are drawn: setting them per panel would freeze the shared scale at the
    # first panel's data and cut off faster engines in the others.
    top = max(v[2] for points in series.values() for v in points.values())
    axes[0][0].set_ylim(0, top * 1.08)
    rec = records[0]
    fig.suptitle(title or f"{rec.model.ref} on {_device(rec)}: {rec.pairs.n_pairs} pairs")
    return plots.save_png(fig, path)

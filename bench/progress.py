"""Progress bars that help: one per long step, counting passages or pairs, with a steady rate.

Each long step (encoding a corpus, searching it, reranking) draws one bar. Its rate is the step's
average so far (tqdm's ``smoothing=0``), not the last update's, so batches of growing size and shards
of cached work do not make the rate and the ETA jump; work found already done is counted on the bar
but not in the rate (`skip`). Inner loops do not draw bars of their own: they `advance` the running
step's bar, so a bar over large shards still moves between shards. Hugging Face's own bars
("Loading weights", "Writing model shards", downloads) are silenced where models load
(`quiet_hub_bars`), and bm25s' bars are not drawn, unless ``RERANK_BENCH_VERBOSE`` is set
(``bench --verbose``, `verbose`); ``--no-progress``
silences every bar (``bench.cli.silence_progress``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from . import lazy

#: the bar of the step running in this process, if any (steps run one after another)
_running = None
_hub_quieted = False


def bar(total: int | None, desc: str, unit: str, *, enabled: bool = True):
    """A step's bar: average rate, redrawn at most once a second, counts with SI prefixes (12.3k)."""
    return lazy.tqdm.tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True,
                          smoothing=0.0, mininterval=1.0, unit_scale=True)


@contextmanager
def step(total: int | None, desc: str, unit: str, *, enabled: bool = True) -> Iterator:
    """`bar(...)` as the running step's bar, which inner loops `advance`; closed at the end."""
    global _running
    outer, _running = _running, bar(total, desc, unit, enabled=enabled)
    try:
        yield _running
    finally:
        _running.close()
        _running = outer


def advance(n: int) -> None:
    """`n` items an inner loop finished, counted on the running step's bar (none: nothing drawn)."""
    if _running is not None:
        _running.update(n)


def catch_up(b, done: int) -> None:
    """Bring the bar to `done` items (what inner loops did not count already, e.g. in other processes)."""
    if done > b.n:
        b.update(done - b.n)


def skip(b, n: int) -> None:
    """`n` items found already done (cached): counted on the bar, left out of its rate and ETA."""
    if not b.disable:  # a disabled bar keeps no `initial`
        b.initial += n
        b.update(n)


def verbose() -> bool:
    """Whether the libraries' own bars and messages are wanted (`bench --verbose`, RERANK_BENCH_VERBOSE)."""
    return bool(os.environ.get("RERANK_BENCH_VERBOSE"))


def quiet_hub_bars() -> None:
    """Silence Hugging Face's own bars (transformers' weight loading and saving, hub downloads) once per
    process, unless RERANK_BENCH_VERBOSE is set: a step's one bar says what the run is doing."""
    global _hub_quieted
    if _hub_quieted or verbose():
        return
    lazy.huggingface_hub_utils.disable_progress_bars()
    lazy.transformers.utils.logging.disable_progress_bar()
    _hub_quieted = True

"""Metrics as values: one canonical text form per metric, whatever spelling asked for it.

People write the same metric many ways: ``nDCG@10`` and ``RR@10`` (ir_measures), ``ndcg_cut.10``
and ``recip_rank`` (trec_eval), ``ndcg_cut_10``, ``P_10`` and ``recall_100`` (pytrec_eval's result
keys), ``mrr@10`` or ``Recall@100`` (this project's experiments). All of them parse,
case-insensitively, to one `Metric`, whose ``str()`` is the canonical form that
records, tables and comparisons key on. Records written before keyed their values on the
spelling the user typed; `by_metric` reads such a mapping through the canonical form.

The canonical forms are those today's records already show for the default metrics (``nDCG@10``,
``MRR@10``, ``Recall@100``, and ``judged@10`` among the diagnostics); the rest follow ir_measures,
except that means of per-query AP are ``MAP``, as those of RR are ``MRR``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, TypeVar

from pydantic import AfterValidator

from .errors import BenchError, did_you_mean

#: Our measure -> (canonical spelling, trec_eval measure without a cutoff, with cutoff k). A measure
#: with no form without a cutoff needs one; one with no form with a cutoff takes none.
MEASURES: dict[str, tuple[str, str | None, str | None]] = {
    "ndcg": ("nDCG", "ndcg", "ndcg_cut.{k}"),
    "mrr": ("MRR", "recip_rank", "recip_rank with -M {k}"),
    "recall": ("Recall", None, "recall.{k}"),
    "map": ("MAP", "map", "map_cut.{k}"),
    "precision": ("P", None, "P.{k}"),
    "r-precision": ("Rprec", "Rprec", None),
    "judged": ("judged", None, "P.{k} with relevance level 0 (share of the top k that is judged)"),
}

#: Spellings people write (lower case: ours, ir_measures', trec_eval's) -> our measure.
ALIASES = {
    "ndcg": "ndcg", "ndcg_cut": "ndcg",
    "mrr": "mrr", "rr": "mrr", "recip_rank": "mrr",
    "recall": "recall", "r": "recall",
    "map": "map", "ap": "map", "map_cut": "map",
    "precision": "precision", "p": "precision",
    "r-precision": "r-precision", "rprec": "r-precision", "r_precision": "r-precision",
    "judged": "judged",
}

#: trec_eval's cut measures name several cutoffs when given none: here they need one.
_CUT_ONLY = ("ndcg_cut", "map_cut")

KNOWN_NAMES = ("ndcg@10 (ndcg_cut.10, ndcg_cut_10)", "ndcg", "mrr@10 (rr@10)", "mrr (recip_rank)",
               "recall@100 (r@100, recall.100, recall_100)", "map (ap)", "map@100 (ap@100, map_cut.100, map_cut_100)",
               "precision@10 (p@10, P.10, P_10)", "r-precision (rprec)", "judged@10")

#: a name, then its cutoff after '@' (papers, ir_measures), '.' (trec_eval) or '_' (pytrec_eval's keys)
_NAME = re.compile(r"^\s*([a-z_\-]+?)\s*(?:[@._]\s*(\d+))?\s*$")


@dataclass(frozen=True)
class Metric:
    """One metric: a measure of `MEASURES` and its cutoff (None: the whole ranking).

    Equal metrics are equal values whatever spelling produced them; ``str()`` is the canonical form."""

    measure: str
    cutoff: int | None = None

    def __str__(self) -> str:
        name = MEASURES[self.measure][0]
        return name if self.cutoff is None else f"{name}@{self.cutoff}"

    @property
    def trec_eval(self) -> str:
        """The trec_eval measure this metric equals (under the same -c -M -l -J)."""
        _, whole, cut = MEASURES[self.measure]
        return whole if self.cutoff is None else cut.format(k=self.cutoff)


def parse_metric(name: str | Metric) -> Metric:
    """Any accepted spelling, case-insensitive ('nDCG@10', 'ndcg_cut.10', 'RR@10', 'mrr@10', 'R@100',
    'recall.100', 'AP', 'map_cut.100', 'P.10', 'Rprec', 'judged@10') -> its Metric; a Metric is
    returned as it is. Anything else is a BenchError listing the known names."""
    if isinstance(name, Metric):
        return name
    match = _NAME.match(name.lower()) if isinstance(name, str) else None
    measure = ALIASES.get(match.group(1)) if match else None
    if measure is None:
        raise BenchError(f"unknown metric {name!r}{_did_you_mean(name)}; known: {', '.join(KNOWN_NAMES)}")
    cutoff = int(match.group(2)) if match.group(2) is not None else None
    _, whole, cut = MEASURES[measure]
    if cutoff is None and (whole is None or match.group(1) in _CUT_ONLY):
        raise BenchError(f"metric {name!r} needs a cutoff, e.g. {measure}@10")
    if cutoff is not None and cut is None:
        raise BenchError(f"metric {name!r} takes no cutoff (R-precision cuts at the number of relevant documents)")
    if cutoff is not None and cutoff < 1:
        raise BenchError(f"metric {name!r}: the cutoff must be at least 1")
    return Metric(measure, cutoff)


def _did_you_mean(name) -> str:
    """" (did you mean 'ndcg@10'?)" for a misspelt metric name (its cutoff kept), else ""."""
    match = re.match(r"^\s*([a-z_\-]+?)\s*([@._]\s*\d+)?\s*$", name.lower()) if isinstance(name, str) else None
    return did_you_mean(match.group(1), ALIASES, match.group(2) or "") if match else ""


def unique_metrics(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(`names` with a metric named twice, in two spellings or the same, kept once at its first
    spelling, a note for each one merged). An unknown name is a BenchError, as `parse_metric` says."""
    kept: dict[Metric, str] = {}
    notes = []
    for name in names:
        metric = parse_metric(name)
        if metric in kept:
            notes.append(f"metric {name!r} is {kept[metric]!r} again ({metric}): counted once")
            continue
        kept[metric] = name
    return list(kept.values()), notes


V = TypeVar("V")


def by_metric(values: Mapping[str, V]) -> dict[Metric, V]:
    """A mapping keyed by metric names as some record spelled them, keyed by Metric instead; keys
    that name no metric are left out (records written before keyed on the spelling typed)."""
    out: dict[Metric, V] = {}
    for key, value in values.items():
        try:
            out.setdefault(parse_metric(key), value)
        except BenchError:
            continue
    return out



def checked_name(name: str) -> str:
    """`name` as written, if it names a metric in any accepted spelling; else the ValueError a settings
    model reports against its field (experiment files, registry entries)."""
    try:
        parse_metric(name)
    except BenchError as exc:
        raise ValueError(str(exc)) from None
    return name


#: A metric name field of a settings model: kept as the user wrote it, checked when the file is read.
MetricName = Annotated[str, AfterValidator(checked_name)]

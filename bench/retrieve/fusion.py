"""Fusion of first stages (``kind = "fusion"``): two or more named first stages' candidate lists made
into one through ``ranx.fuse``; no fusion method is written here.

Methods (``method``, ranx's name in brackets): ``rrf`` (reciprocal rank fusion, ``rrf``: sum over the
lists of ``1 / (k + rank)``, ``rrf_k`` = k, 60 by default), ``combsum`` (``sum``), ``combmnz`` (``mnz``:
CombSUM times the number of lists holding the passage) and ``wsum`` (``wsum``: weighted sum,
``fusion_weights`` one per member). The score methods first normalise each list with one of ranx's
normalisations (``norm``: ``min-max`` by default, ``max``, ``sum``, ``zmuv`` (z-score), ``rank``, or
``none``); a passage missing from a list counts 0 there, as ranx counts it.

Each member list is taken at its own first stage's depth (the record states it; a member shallower than
the fusion is refused when the experiment is read); the fused list is cut to the fusion's ``depth``.

Ties: a member list handed to a rank-based method (``rrf``, ``norm = "rank"``) carries its ranks as
scores, its order fixed by the harness's one tie rule (``bench.runs.sort_ranking``: score descending,
then document id descending) rather than by numba's unstable sort inside ranx; the fused list is
ordered and cut by the same rule. With no ties in the members, that is ``ranx.fuse`` on the member runs
exactly.
"""

from __future__ import annotations

import warnings

from .. import lazy
from ..runs import Run, sort_ranking

#: Our method names -> ranx's.
METHODS = {"rrf": "rrf", "combsum": "sum", "combmnz": "mnz", "wsum": "wsum"}
#: ranx's normalisations a score method may use ("none": the raw scores).
NORMS = ("min-max", "max", "sum", "zmuv", "rank", "none")
DEFAULT_NORM = "min-max"
DEFAULT_RRF_K = 60


def settings(spec) -> dict:
    """What the fusion does, every default filled in (records state these): method, its ranx name,
    the normalisation and the method's parameters."""
    method = spec.method or "rrf"
    out = {"method": method, "ranx_method": METHODS[method], "members": list(spec.first_stages)}
    if method == "rrf":
        out.update(norm=None, params={"k": spec.rrf_k or DEFAULT_RRF_K})
    else:
        out.update(norm=spec.norm or DEFAULT_NORM, params={})
        if method == "wsum":
            out["params"] = {"weights": [spec.fusion_weights[m] for m in spec.first_stages]}
    return out


def rank_based(method: dict) -> bool:
    """Whether ranx reads only each member list's order (so the tie rule must fix it)."""
    return method["method"] == "rrf" or method["norm"] == "rank"


def member_run(run: Run, qids: list[str], by_rank: bool) -> Run:
    """A member run for ranx over `qids` (a query the member did not rank gets an empty list); with
    `by_rank`, each list's scores replaced by descending ranks in `sort_ranking`'s order."""
    out: Run = {}
    for qid in qids:
        docs = run.get(qid, {})
        if by_rank:
            ranked = sort_ranking(docs)
            out[qid] = {doc: float(len(ranked) - i) for i, (doc, _) in enumerate(ranked)}
        else:
            out[qid] = dict(docs)
    return out


def fuse(runs: dict[str, Run], method: dict, depth: int) -> dict[str, list[tuple[str, float]]]:
    """The fused ranking of every query any member ranked, best first by `sort_ranking`, cut to `depth`.
    `runs`: member name -> its run, in the fusion's member order; `method`: ``settings(spec)``."""
    ranx = lazy.ranx
    qids = sorted({q for run in runs.values() for q in run})
    by_rank = rank_based(method)
    members = [ranx.Run(member_run(run, qids, by_rank), name=name) for name, run in runs.items()]
    norm = None if method["norm"] in (None, "none") else method["norm"]
    with warnings.catch_warnings():  # numba's note on ranx's rrf (an int cast of a rank), not ours to act on
        warnings.filterwarnings("ignore", message="unsafe cast")
        fused = ranx.fuse(members, norm=norm, method=method["ranx_method"], params=dict(method["params"])).to_dict()
    return {qid: sort_ranking(fused.get(qid, {}))[:depth] for qid in qids}

"""Paired statistics over per-query scores: t-test, randomization test, bootstrap interval, Holm.

Each function takes the two systems' scores of the same queries, in the same order, as arrays (or
a list of p-values, for Holm), and knows nothing of datasets, metrics or tables (`bench.report.compare`
builds comparisons from them). Seeded where random, so that a comparison gives the same numbers on
every call:

* the paired two-sided t-test is ranx's ``paired_student_t_test``, i.e. scipy's ``ttest_rel``;
* the paired two-sided randomization test swaps the two systems' scores of a query with
  probability 1/2, as ranx's Fisher test does, but with a seeded numpy generator: ranx's numba
  version seeds only the calling thread and so gives a different p-value on every call;
  p = (extreme + 1) / (permutations + 1), never 0;
* the bootstrap interval is a percentile interval on the mean difference, queries resampled with
  replacement;
* Holm's step-down correction adjusts a family of p-values.

Identical per-query scores (all differences 0) get p = 1 for both tests (scipy would say NaN).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from . import lazy


def paired_t_test(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired t-test p-value (ranx's, which is scipy's ttest_rel); 1.0 when a == b everywhere."""
    if np.all(a == b):
        return 1.0
    with warnings.catch_warnings():  # a constant non-zero difference: scipy warns, then gives p = 0
        warnings.simplefilter("ignore", RuntimeWarning)
        p, _ = lazy.ranx.statistical_tests.paired_student_t_test(a, b)
    return float(p)


def paired_randomization_test(a: np.ndarray, b: np.ndarray, permutations: int = 10_000, seed: int = 42,
                              chunk: int = 1000) -> float:
    """Two-sided paired randomization test: how often a random swap of each query's pair gives a mean
    difference at least as large (in absolute value) as the observed one; p = (count + 1) / (n + 1)."""
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if not np.any(diff):
        return 1.0
    observed = abs(diff.mean())
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, permutations, chunk):
        n = min(chunk, permutations - start)
        signs = rng.integers(0, 2, size=(n, diff.size), dtype=np.int8) * 2 - 1
        extreme += int(np.count_nonzero(np.abs(signs @ diff) / diff.size >= observed - 1e-12))
    return (extreme + 1) / (permutations + 1)


def bootstrap_ci(a: np.ndarray, b: np.ndarray, resamples: int = 10_000, confidence: float = 0.95,
                 seed: int = 42, chunk: int = 1000) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(b - a), resampling queries with replacement."""
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        means[start:start + n] = diff[rng.integers(0, diff.size, size=(n, diff.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error over all of `pvalues`)."""
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = p.size
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted

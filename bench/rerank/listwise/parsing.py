"""A window's answer read as rank_llm reads it, and repaired as it repairs it, with what was repaired.

Generation (``ListwiseRankLLM.receive_permutation`` and ``response_utils.clean_ranking_response``):
the text after a ``</think>`` if any; look-alike digits (superscripts, subscripts, circled, fullwidth)
mapped to ASCII; with numeric identifiers every non-digit becomes a space, with alphabetical ones
every letter becomes its number (``A`` = 1) and everything else a space; the numbers in order, minus
one. Then duplicates are removed (first kept), identifiers outside the window dropped, and the
window's missing candidates appended in their previous order. A number Python cannot read (a digit
without a decimal value) makes rank_llm keep the window as it was; so here.

FIRST (``RankListwiseOSLLM._evaluate_logits`` with ``use_alpha``, rank_llm before commit 94d8c51, where
the logits path last ran): the identifier tokens among the first generated position's top 30
log-probabilities (vLLM's ``logprobs=30``), ordered by logit; identifiers outside the top 30 are
missing and appended in their previous order, as above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: vLLM's ``logprobs`` in rank_llm's FIRST path: only identifiers among these many top tokens are ranked.
FIRST_TOP_LOGPROBS = 30
_LOOKALIKES = {
    "superscript": ("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789"),
    "subscript": ("₀₁₂₃₄₅₆₇₈₉", "0123456789"),
    "circled": ("".join(chr(0x2460 + i) for i in range(9)), "123456789"),
    "negative circled": ("".join(chr(0x2776 + i) for i in range(9)), "123456789"),
    "fullwidth": ("".join(chr(0xFF10 + i) for i in range(10)), "0123456789"),
    "digit full stop / comma": ("".join(chr(0x1F100 + i) for i in range(10)), "0123456789"),
}
DIGITS = str.maketrans("".join(a for a, _ in _LOOKALIKES.values()), "".join(b for _, b in _LOOKALIKES.values()))


@dataclass(frozen=True)
class Repair:
    """What reading one window's answer took: the complete permutation and what was fixed in it."""

    permutation: list[int]
    missing: int = 0
    duplicate: int = 0
    unknown: int = 0
    empty: bool = False
    unreadable: bool = False

    @property
    def repaired(self) -> bool:
        return bool(self.missing or self.duplicate or self.unknown or self.unreadable)


def clean_response(text: str, alpha: bool) -> str:
    """The identifiers of an answer as space-separated numbers (1-based), as rank_llm cleans it."""
    if "</think>" in text:
        text = text.split("</think>")[-1].strip()
    text = text.translate(DIGITS)
    if alpha:
        out = "".join(str(ord(c) - ord("A") + 1) if c.isalpha() else " " for c in text)
    else:
        out = "".join(c if c.isdigit() else " " for c in text)
    return out.strip()


def complete(ranked: list[int], n: int, **counts) -> Repair:
    """``ranked`` (0-based, in the answer's order) without duplicates and unknown identifiers, with the
    missing ones appended in their previous order."""
    seen: list[int] = []
    duplicate = unknown = 0
    for i in ranked:
        if i in seen:
            duplicate += 1
        elif not 0 <= i < n:
            unknown += 1
        else:
            seen.append(i)
    missing = [i for i in range(n) if i not in seen]
    return Repair(seen + missing, missing=len(missing), duplicate=duplicate, unknown=unknown, **counts)


def parse_answer(text: str, n: int, alpha: bool) -> Repair:
    """A generated answer for a window of ``n`` passages, read and repaired."""
    cleaned = clean_response(text, alpha)
    try:
        ranked = [int(x) - 1 for x in cleaned.split()]
    except ValueError:  # rank_llm catches it and keeps the window's order
        return Repair(list(range(n)), unreadable=True, empty=not text.strip())
    return complete(ranked, n, empty=not text.strip())


def order_from_logits(logits: np.ndarray, kth: float, n: int) -> Repair:
    """FIRST: identifiers ``0..n-1`` whose logit reaches the top-``FIRST_TOP_LOGPROBS`` threshold ``kth``,
    by logit (ties: the earlier identifier first), then the others in their previous order."""
    logits = np.asarray(logits, dtype=np.float64)[:n]
    ranked = [int(i) for i in sorted(range(n), key=lambda i: -logits[i]) if logits[i] >= kth]
    return complete(ranked, n)

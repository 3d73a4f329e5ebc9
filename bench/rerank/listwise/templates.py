"""rank_llm's listwise prompt templates, and the messages of one window built from them.

A template (rank_llm ``src/rank_llm/rerank/prompt_templates/*.yaml``) has a system message and the
text around the passages: single-turn templates a ``prefix``, one ``body`` per passage and a
``suffix``, all in one user turn; multi-turn ones (RankGPT) a user/assistant exchange before the
passages, one user turn (and an assistant acknowledgement) per passage, then the suffix. Built as
rank_llm's ``SingleTurnListwiseInferenceHandler`` / ``MultiTurnListwiseInferenceHandler`` build them:

* the query with ``[digits]`` written ``(digits)``; ``{num}`` = passages in this window;
* each passage stripped, ``ftfy.fix_text``-ed, cut to its first ``max_words`` words (whitespace
  split, joined by single spaces), ``[digits]`` written ``(digits)``;
* identifiers ``1..n``, or ``A..`` for the alphabetical template (FIRST reads them as single tokens).

The harness hands a reranker each passage as one text (title and text joined by a space), so the
``Title: ... Content: ...`` form rank_llm gives documents that have a title is not reproduced.

``variable_passages``: rank_llm's templates print the answer example of windows that may hold fewer
passages (``[2] > [1]``, ``[B] > [A]``); before the YAML templates (rank_llm up to commit 243911e) the
example was ``[4] > [2]`` (``[D] > [B]``) unless ``variable_passages`` was set, and that is what the
flag does here (today's rank_llm ignores it). rank_llm's body may print the first stage's score
(``{score}``); a reranker here is not handed scores, so such a template is refused.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

from ... import lazy

#: rank_llm at the commit the registry cites (its 2CR tables and these templates).
RANK_LLM_COMMIT = "1b3cabbc3564441bdcda6c6a2e92137b9faa0660"
_SOURCE = f"castorini/rank_llm@{RANK_LLM_COMMIT[:7]} src/rank_llm/rerank/prompt_templates/"

_RANKLLM_SYSTEM = "You are RankLLM, an intelligent assistant that can rank passages based on their relevancy to the query"
_ZEPHYR_SUFFIX = ("Search Query: {query}.\nRank the {num} passages above based on their relevance to the search query. "
                  "All the passages should be included and listed using identifiers, in descending order of "
                  "relevance. The output format should be [] > [], e.g., %s, Answer concisely and directly and only "
                  "respond with the ranking results, do not say any word or explain.")

#: The templates rank_llm ships that open-weights rows of its tables use (sections as the YAML gives them:
#: ``|`` blocks end with a newline, ``|-`` blocks do not).
BUILTIN: dict[str, dict[str, str]] = {
    "rank_zephyr": {
        "method": "singleturn_listwise",
        "system_message": _RANKLLM_SYSTEM,
        "prefix": "I will provide you with {num} passages, each indicated by a numerical identifier []. Rank the "
                  "passages based on their relevance to the search query: {query}.\n",
        "body": "[{rank}] {candidate}\n",
        "suffix": _ZEPHYR_SUFFIX % "[2] > [1]",
        "output_validation_regex": r"^\[\d+\]( > \[\d+\])*$",
        "output_extraction_regex": r"\[(\d+)\]",
    },
    "rank_zephyr_alpha": {
        "method": "singleturn_listwise",
        "system_message": _RANKLLM_SYSTEM,
        "prefix": "I will provide you with {num} passages, each indicated by an alphabetical identifier []. Rank the "
                  "passages based on their relevance to the search query: {query}.\n",
        "body": "[{rank}] {candidate}\n",
        "suffix": _ZEPHYR_SUFFIX % "[B] > [A]",
        "output_validation_regex": r"^\[[A-Z]\]( > \[[A-Z]\])*$",
        "output_extraction_regex": r"\[([A-Z])\]",
    },
    "rank_gpt": {
        "method": "multiturn_listwise",
        "system_message": "You are RankGPT, an intelligent assistant that can rank passages based on their relevancy "
                          "to the query.",
        "prefix_user": "I will provide you with {num} passages, each indicated by number identifier [].\nRank the "
                       "passages based on their relevance to query: {query}.",
        "prefix_assistant": "Okay, please provide the passages.",
        "body_user": "[{rank}] {candidate}",
        "body_assistant": "Received passage [{rank}].",
        "suffix_user": "Search Query: {query}.\nRank the {num} passages above based on their relevance to the search "
                       "query. The passages should be listed in descending order using identifiers. The most "
                       "relevant passages should be listed first. The output format should be [] > [], e.g., "
                       "[1] > [2]. Only response the ranking results, do not say any word or explain.",
        "output_validation_regex": r"^\[\d+\]( > \[\d+\])*$",
        "output_extraction_regex": r"\[(\d+)\]",
    },
}
#: rank_llm's file names (as its 2CR commands and the registry's table name them) -> built-in name
FILE_NAMES = {f"{name}_template.yaml": name for name in BUILTIN}

#: section -> (required, placeholders it must hold, placeholders it may hold), per method (rank_llm's
#: ``_validate_template`` of the single- and multi-turn handlers)
SECTIONS = {
    "singleturn_listwise": {
        "method": (True, set(), set()), "system_message": (False, set(), set()),
        "prefix": (False, set(), {"query", "num"}), "body": (True, {"rank", "candidate"}, set()),
        "suffix": (False, set(), {"query", "num", "psg_ids"}),
        "output_validation_regex": (True, set(), set()), "output_extraction_regex": (True, set(), set()),
    },
    "multiturn_listwise": {
        "method": (True, set(), set()), "system_message": (False, set(), set()),
        "prefix_user": (False, set(), {"query", "num"}), "prefix_assistant": (False, set(), {"query", "num"}),
        "body_user": (True, {"rank", "candidate"}, set()), "body_assistant": (False, set(), {"rank"}),
        "suffix_user": (False, set(), {"query", "num"}),
        "output_validation_regex": (True, set(), set()), "output_extraction_regex": (True, set(), set()),
    },
}
_NUMBER = re.compile(r"\[(\d+)\]")


@dataclass(frozen=True)
class ListwiseTemplate:
    """A validated template: its sections, whether identifiers are letters, where it comes from."""

    name: str
    sections: dict
    alpha: bool
    source: str

    @property
    def multiturn(self) -> bool:
        return self.sections["method"] == "multiturn_listwise"

    def identifiers(self, n: int) -> list[str]:
        return [chr(ord("A") + i) for i in range(n)] if self.alpha else [str(i + 1) for i in range(n)]

    def messages(self, query: str, passages, max_words: int, *, variable_passages: bool) -> list[dict[str, str]]:
        """The chat messages of one window, as rank_llm's inference handlers build them."""
        query = replace_numbers(query)
        n = len(passages)
        ids = self.identifiers(n)
        contents = [passage_content(p, max_words) for p in passages]
        s = self.sections
        out = [{"role": "system", "content": s["system_message"]}] if s.get("system_message") else []
        values = {"num": n, "query": query}
        if not self.multiturn:
            suffix_values = dict(values)
            if "psg_ids" in placeholders(s.get("suffix", "")):  # rank_lrl's template
                suffix_values["psg_ids"] = "[" + ", ".join(f"PASSAGE{i + 1}" for i in range(n)) + "]"
            suffix = s.get("suffix", "").format(**suffix_values)
            if not variable_passages:
                suffix = suffix.replace(*(("[B] > [A]", "[D] > [B]") if self.alpha else ("[2] > [1]", "[4] > [2]")))
            body = "".join(s["body"].format(rank=i, candidate=c) for i, c in zip(ids, contents))
            out.append({"role": "user", "content": s.get("prefix", "").format(**values) + body + suffix})
            return out
        prefix_user = s.get("prefix_user", "").format(**values)
        if prefix_user:
            out += [{"role": "user", "content": prefix_user},
                    {"role": "assistant", "content": s.get("prefix_assistant", "").format(**values)}]
        suffix = s.get("suffix_user", "").format(**values)
        if "body_assistant" in s:
            for i, c in zip(ids, contents):
                out += [{"role": "user", "content": s["body_user"].format(rank=i, candidate=replace_numbers(c))},
                        {"role": "assistant", "content": s["body_assistant"].format(rank=i)}]
            if suffix:
                out.append({"role": "user", "content": suffix})
        else:
            body = "".join(s["body_user"].format(rank=i, candidate=replace_numbers(c)) for i, c in zip(ids, contents))
            out.append({"role": "user", "content": body + suffix})
        return out


def replace_numbers(text: str) -> str:
    """``[12]`` -> ``(12)``: no bracketed number in a query or passage can pass for an identifier."""
    return _NUMBER.sub(r"(\1)", text)


def passage_content(passage: str, max_words: int) -> str:
    """One passage as rank_llm puts it in a prompt: stripped, fixed by ftfy, its first ``max_words`` words."""
    text = lazy.ftfy.fix_text(passage.strip())
    return replace_numbers(" ".join(text.split()[:int(max_words)]))


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def check_sections(sections: dict, where: str) -> None:
    """rank_llm's template rules as one ValueError naming the section: required sections, the
    placeholders each must hold and may hold, and ``{query}`` in the prefix or the suffix."""
    method = sections.get("method")
    if method not in SECTIONS:
        raise ValueError(f"{where}: method {method!r}; a listwise template is 'singleturn_listwise' or "
                         "'multiturn_listwise'")
    rules = SECTIONS[method]
    missing = [k for k, (required, _, _) in rules.items() if required and k not in sections]
    if missing:
        raise ValueError(f"{where}: missing section(s) {missing}")
    has_query = False
    for key, text in sections.items():
        if key not in rules:
            raise ValueError(f"{where}: unknown section {key!r}; a {method} template has {sorted(rules)}")
        if not isinstance(text, str):
            raise ValueError(f"{where}: section {key!r} must be a string")
        _, need, may = rules[key]
        used = placeholders(text) if key not in ("output_validation_regex", "output_extraction_regex") else set()
        if need - used:
            raise ValueError(f"{where}: section {key!r} lacks its placeholder(s) "
                             f"{', '.join('{' + p + '}' for p in sorted(need - used))}")
        if used - need - may:
            raise ValueError(f"{where}: section {key!r} has unknown placeholder(s) "
                             f"{', '.join('{' + p + '}' for p in sorted(used - need - may))}; it may hold "
                             f"{', '.join('{' + p + '}' for p in sorted(need | may)) or 'none'}")
        has_query |= "query" in used
    if not has_query:
        raise ValueError(f"{where}: no section holds {{query}} (the prefix or the suffix must)")
    if method == "multiturn_listwise" and "prefix_assistant" not in sections and "body_assistant" not in sections:
        raise ValueError(f"{where}: a multiturn_listwise template needs prefix_assistant or body_assistant")


def load_template(name: str) -> ListwiseTemplate:
    """A built-in template (``rank_zephyr``, ``rank_zephyr_alpha``, ``rank_gpt``, or rank_llm's file name
    of one) or a rank_llm-format YAML file; ValueError naming what is wrong."""
    name = FILE_NAMES.get(name, name)
    if name in BUILTIN:
        sections, source = BUILTIN[name], _SOURCE + f"{name}_template.yaml"
    else:
        path = Path(name)
        if path.suffix not in (".yaml", ".yml"):
            raise ValueError(f"prompt_template {name!r}: one of {', '.join(BUILTIN)} or a rank_llm template file "
                             "(*.yaml)")
        if not path.is_file():
            raise ValueError(f"prompt_template {name!r}: no such file")
        try:
            sections = lazy.yaml.safe_load(path.read_text(encoding="utf-8"))
        except lazy.yaml.YAMLError as exc:
            raise ValueError(f"prompt_template {name}: not valid YAML ({exc})") from None
        if not isinstance(sections, dict):
            raise ValueError(f"prompt_template {name}: a YAML mapping of template sections is expected")
        source = str(path.resolve())
    check_sections(sections, f"prompt_template {name}")
    alpha = "[A-Z]" in sections.get("output_extraction_regex", "")
    return ListwiseTemplate(name, dict(sections), alpha, source)


def template_problem(name: str, window: int) -> str | None:
    """Why ``name`` cannot serve windows of ``window`` passages (None: it can)."""
    try:
        template = load_template(name)
    except ValueError as exc:
        return str(exc)
    if template.alpha and window > 26:
        return f"window = {window}: the alphabetical template {name!r} has identifiers A..Z (26 at most)"
    return None

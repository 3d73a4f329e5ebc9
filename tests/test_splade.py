"""`kind = "splade"` against SPLADE's formula computed independently, and its exact sparse search.

The reference here is the authors' computation written out in this file: the plain Hugging Face
``AutoModelForMaskedLM`` forward, one passage at a time (no padding, no batching), then
``max over tokens of log(1 + relu(logits))``. The harness computes the same with the packed forward and
a chunked, fused MLM head (engine "fast") and with the plain padded loop (engine "transformers").
Texts: real Vaswani abstracts and MIRACL Yoruba passages and queries (../shared/data). Models:
``random:tiny-splade`` (2-layer BERT MLM, bert-base-uncased's real vocabulary) and the exact-shape
``random:splade-pp-ed`` (BERT base), both untrained.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench import models
from bench.config import CollectionSpec, FirstStageSpec, load_experiment
from bench.data import load_collection
from bench.errors import BenchError
from bench.evaluate import evaluate
from bench.retrieve import sparse
from bench.retrieve.splade import SpladeEncoder
from bench.retrieve.stage import FirstStage

TINY = "random:tiny-splade"
TOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def spec(model: str = TINY, **extra) -> FirstStageSpec:
    fields = {"kind": "splade", "model": model, "dtype": "fp32", "device": "cpu", "max_length": 128, **extra}
    return FirstStageSpec(**fields)


# -- the independent implementation ---------------------------------------------------------------------
class Reference:
    """SPLADE weights as the authors compute them: AutoModelForMaskedLM on one passage, the formula."""

    def __init__(self, folder: str):
        import transformers

        self.tok = transformers.AutoTokenizer.from_pretrained(folder)
        self.model = transformers.AutoModelForMaskedLM.from_pretrained(folder).eval()

    def weights(self, text: str, max_length: int, drop_special: bool = False) -> np.ndarray:
        import torch

        enc = self.tok(text, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            logits = self.model(**enc).logits[0].double()
        w = torch.log(1 + torch.relu(logits)).max(dim=0).values
        if drop_special:
            w[self.tok.all_special_ids] = 0
        return w.numpy()


def texts_of(shared: Path, folder: str, n: int) -> list[str]:
    out = []
    with gzip.open(shared / folder / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            out.append(f"{d.get('title', '')} {d['text']}".strip())
            if len(out) == n:
                return out
    return out


def queries_of(shared: Path, folder: str, n: int) -> list[str]:
    lines = (shared / folder / "queries.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    return [json.loads(line)["text"] for line in lines]


@pytest.fixture(scope="module")
def real_texts(shared_data):
    """Vaswani abstracts, MIRACL Yoruba passages (long ones are cut by max_length) and both sets' queries."""
    return (texts_of(shared_data, "vaswani", 30) + texts_of(shared_data, "miracl-yo-dev", 30)
            + queries_of(shared_data, "vaswani", 10) + queries_of(shared_data, "miracl-yo-dev", 10))


def assert_rows_equal(got, texts, ref: Reference | list[np.ndarray], max_length: int = 128,
                      drop_special: bool = False) -> None:
    """Each row of `got` equals the reference weights of its text (computed now, or given)."""
    assert got.shape[0] == len(texts)
    for i, text in enumerate(texts):
        want = ref[i] if isinstance(ref, list) else ref.weights(text, max_length, drop_special)
        assert got.shape[1] == len(want)
        np.testing.assert_allclose(got[i].toarray()[0], want, atol=TOL, err_msg=f"text {i}: {text[:60]!r}")


@pytest.fixture(scope="module")
def real_reference(real_texts, cache_dir) -> list[np.ndarray]:
    """The tiny model's reference weights of every real text (max_length 128), computed once."""
    ref = Reference(models.resolve(TINY, cache_dir))
    return [ref.weights(text, 128) for text in real_texts]


# -- weights ----------------------------------------------------------------------------------------------
@pytest.mark.shared_data
@pytest.mark.parametrize("engine,chunk", [("fast", None), ("fast", 7), ("transformers", None)])
def test_weights_equal_the_formula_on_vaswani_and_miracl_text(engine, chunk, real_texts, real_reference, cache_dir):
    """chunk 7: the fused head's chunks end inside sequences, so the running maximum carries across them."""
    enc = SpladeEncoder(spec(engine=engine, batch_size=8), cache_dir=cache_dir, chunk_tokens=chunk)
    got = enc.encode_docs(real_texts)
    assert_rows_equal(got, real_texts, real_reference)
    assert 20 < got.nnz / got.shape[0] < 2000  # sparse, as a trained SPLADE's: the random model's bias sees to it


@pytest.mark.shared_data
def test_exact_shape_splade_pp_ed_weights_equal_the_formula(real_texts, cache_dir):
    """BERT base with its MLM head (SPLADE++ ED's shape, random weights): a few texts, both sides."""
    texts = real_texts[:3] + real_texts[30:32] + real_texts[-2:]
    enc = SpladeEncoder(spec("random:splade-pp-ed", max_length=96), cache_dir=cache_dir)
    ref = Reference(models.resolve("random:splade-pp-ed", cache_dir))
    assert_rows_equal(enc.encode_docs(texts), texts, ref, 96)
    assert_rows_equal(enc.encode_queries(texts[-2:]), texts[-2:], ref, 96)


@pytest.fixture(scope="module")
def tiny_distilbert(cache_dir, tmp_path_factory) -> str:
    """A random 2-layer DistilBERT MLM (an architecture the packed forward does not run) with BERT's vocabulary."""
    import torch
    import transformers

    folder = tmp_path_factory.mktemp("tiny-distilbert-mlm")
    cfg = transformers.DistilBertConfig(vocab_size=30522, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                        architectures=["DistilBertForMaskedLM"])
    torch.manual_seed(0)
    model = transformers.DistilBertForMaskedLM(cfg).eval()
    with torch.no_grad():
        model.vocab_projector.bias.fill_(-0.6)
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(models.bert_tokenizer_dir()).save_pretrained(folder)
    return str(folder)


@pytest.mark.shared_data
def test_the_hf_forward_and_dropped_special_tokens(real_texts, tiny_distilbert, cache_dir):
    """DistilBERT runs the padded Hugging Face forward, the fused head over its real tokens; with
    special_tokens = "drop" (OpenSearch's models) [CLS], [SEP] ... get no weight."""
    texts = real_texts[:12] + real_texts[-4:]
    enc = SpladeEncoder(spec(tiny_distilbert, special_tokens="drop"), cache_dir=cache_dir)
    assert enc.describe()["forward"] == "hf"
    assert_rows_equal(enc.encode_docs(texts), texts, Reference(tiny_distilbert), 128, drop_special=True)


def test_idf_queries_weigh_each_distinct_token_by_the_models_table(cache_dir, tmp_path):
    """query_encoder = "idf" (OpenSearch's doc-only models): a query's weights are its distinct tokens'
    idf.json entries; no model runs on it."""
    folder = tmp_path / "doc-only"
    shutil.copytree(models.resolve(TINY, cache_dir), folder)
    (folder / "idf.json").write_text(json.dumps({"the": 0.5, "cat": 2.0, "sat": 3.25, "[UNK]": 0.1}), encoding="utf-8")
    enc = SpladeEncoder(spec(str(folder), query_encoder="idf"), cache_dir=cache_dir)
    q = enc.encode_queries(["The cat, the cat!", "nothing here"])
    tok = enc.docs.tokenizer
    ids = tok.convert_tokens_to_ids(["the", "cat"])
    assert dict(zip(q[0].indices.tolist(), q[0].data.tolist())) == {ids[0]: 0.5, ids[1]: 2.0}
    assert q[1].nnz == 0
    assert enc.describe()["query_encoder"] == "idf"


# -- search -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vaswani300(shared_data, tmp_path_factory):
    """Vaswani's first 12 queries over their judged abstracts and 250 others (about 300 passages)."""
    from test_systems import vaswani_subset

    folder = vaswani_subset(shared_data, tmp_path_factory.mktemp("vaswani300") / "v")
    return load_collection(CollectionSpec(source="beir", path=str(folder), name="vaswani300", language="en"))


def brute_force(q, corpus, ids: list[str], k: int) -> list[dict[str, float]]:
    """Every passage's score for every query, then the top k (ties by corpus order)."""
    scores = (q.astype(np.float64) @ corpus.astype(np.float64).T).toarray()
    out = []
    for row in scores:
        order = np.lexsort((np.arange(len(ids)), -row))[:k]
        out.append({ids[j]: float(row[j]) for j in order})
    return out


@pytest.fixture(scope="module")
def vaswani300_reference(vaswani300, cache_dir):
    """The reference weights of every passage and query of the subset: (doc ids, CSR corpus, query ids, CSR queries)."""
    import scipy.sparse

    ref = Reference(models.resolve(TINY, cache_dir))
    ids = [d for b in vaswani300.iter_docs(1000) for d, _ in b]
    texts = vaswani300.get_docs(ids)
    qids = sorted(vaswani300.queries)
    corpus = scipy.sparse.csr_matrix(np.stack([ref.weights(texts[d], 128) for d in ids]))
    queries = scipy.sparse.csr_matrix(np.stack([ref.weights(vaswani300.queries[x], 128) for x in qids]))
    return ids, corpus, qids, queries


@pytest.mark.shared_data
@pytest.mark.parametrize("quantize,query_quantize", [(None, None), (100, None), (100, 51.2)])
def test_search_equals_brute_force_over_independent_weights(quantize, query_quantize, vaswani300,
                                                            vaswani300_reference, cache_dir):
    """The stage's run against the reference weights of every passage scored at once; quantised: integer
    impacts round(w x 100) (queries x query_quantize), as Pyserini's impact index."""
    stage = FirstStage("splade", spec(depth=20, quantize=quantize, query_quantize=query_quantize), cache_dir,
                       progress=False)
    result = stage.retrieve(vaswani300)
    ids, corpus, qids, q = vaswani300_reference
    corpus, q = corpus.copy(), q.copy()
    if quantize:
        corpus.data, q.data = np.rint(corpus.data * quantize), np.rint(q.data * (query_quantize or quantize))
        assert result.info["quantize"] == {"documents": quantize, "queries": query_quantize or quantize,
                                           "rule": result.info["quantize"]["rule"]}
    for qid, want in zip(qids, brute_force(q, corpus, ids, 20)):
        got = result.run[qid]
        if quantize:  # integer scores: equal exactly, and so are the passages kept at the cut (ties by corpus position)
            assert got == want, qid
        else:
            np.testing.assert_allclose(sorted(got.values(), reverse=True), list(want.values()), atol=1e-4)
            assert set(got) == set(want) or abs(min(want.values()) - min(got.values())) < 1e-4  # a swap at the cut
    assert result.info["terms_per_passage"] > 0 and result.info["encoder"]["formula"].startswith("max over tokens")


@pytest.mark.shared_data
def test_a_damaged_weight_shard_is_encoded_again_and_the_run_is_cached(vaswani300, cache_dir, capsys):
    stage = FirstStage("splade", spec(depth=10, shard_size=100, max_length=64), cache_dir, progress=False)
    first = stage.retrieve(vaswani300)
    folder = Path(first.info["embeddings"]["folder"])
    n = vaswani300.n_docs()
    assert sorted(p.name for p in folder.glob("shard-*.sparse.npz")) == [f"shard-0000{i}.sparse.npz"
                                                                          for i in range(-(-n // 100))]
    assert stage.retrieve(vaswani300).cached
    path = folder / "shard-00001.sparse.npz"
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # same size, other bytes: fails its check
    path.write_bytes(bytes(data))
    for f in stage.cache_folder(vaswani300).glob("run.trec*"):
        f.unlink()  # the cached run goes: the search must read the shards again
    again = stage.retrieve(vaswani300)
    assert "shard-00001.sparse.npz" in capsys.readouterr().err
    assert again.info["embeddings"]["encoded_docs"] == 100 and again.info["embeddings"]["reused_docs"] == n - 100
    assert again.run == first.run


@pytest.mark.shared_data
def test_sparse_search_over_miracl_yo_shards_equals_brute_force(miracl_yo_subcorpus, cache_dir):
    """The search over 20 cached weight shards, merged, against scoring every passage at once from the
    same weights: MIRACL-yo's 119 queries over conftest's real 2,434-passage sub-corpus (tiny model,
    max_length 8: the search, not the text, is what this checks). The search is `sparse.sparse_top_k`,
    whose run over all 49,043 passages (20 shards too) test_bge_m3.py checks the same way; SPLADE's
    own weights are checked above."""
    collection = load_collection(CollectionSpec(source="beir", path=str(miracl_yo_subcorpus), split="dev",
                                                name="miracl/yo/dev", language="yo"))
    stage = FirstStage("splade", spec(depth=100, max_length=8, shard_size=125), cache_dir, progress=False)
    shutil.rmtree(stage.cache_folder(collection, create=False), ignore_errors=True)  # searched now (a kept test cache
    result = stage.retrieve(collection)  # holds the run; its ties come back in the run file's order), weights reused
    built = result.info["embeddings"]
    assert built["encoded_docs"] + built["reused_docs"] == 2434
    ids, blocks = zip(*sparse.SparseStore(built["folder"]).shards())
    assert len(blocks) == 20  # 19 shards of 125 and a short last one, merged by the search
    ids = [d for shard in ids for d in shard]
    import scipy.sparse

    corpus = scipy.sparse.vstack(blocks).tocsr()
    qids = sorted(collection.queries)
    q = stage._encoder.encode_queries([collection.queries[x] for x in qids])
    brute = dict(zip(qids, brute_force(q, corpus, ids, 100)))
    assert {k: list(v) for k, v in result.run.items()} == {k: list(v) for k, v in brute.items() if v}
    for qid in result.run:
        np.testing.assert_allclose(list(result.run[qid].values()), list(brute[qid].values()), rtol=1e-9)
    ours = evaluate(collection.qrels, result.run, ["nDCG@10"]).means["nDCG@10"]
    assert abs(ours - evaluate(collection.qrels, brute, ["nDCG@10"]).means["nDCG@10"]) <= 1e-9


# -- bad input --------------------------------------------------------------------------------------------
def test_random_splade_models_are_masked_lms_with_berts_vocabulary(cache_dir):
    import json as _json

    for name in ("tiny-splade", "splade-pp-ed"):
        assert models.reference_problem(f"random:{name}") is None
        assert models.masked_lm_reference_problem(f"random:{name}") is None
    cfg = _json.loads((Path(models.resolve(TINY, cache_dir)) / "config.json").read_text())
    assert cfg["architectures"] == ["BertForMaskedLM"] and cfg["vocab_size"] == 30522
    assert models.describe(TINY)["untrained"] and "bert-base-uncased" in models.describe(TINY)["source"]


@pytest.mark.parametrize("fields,expected", [
    ({"model": "random:tiny-xlmr-reranker"}, "first_stages.s.model"),
    ({"quantize": 0}, "first_stages.s.quantize"),
    ({"quantize": -100}, "greater than 0"),
    ({"query_quantize": 51.2}, "set quantize"),
    ({"engine": "sentence-transformers"}, "takes 'fast'"),
    ({"mode": "sparse"}, "mode does nothing for kind = 'splade' (only kind 'bge-m3' read it)"),
    ({"k1": 0.9}, "k1 does nothing for kind = 'splade' (only kind 'bm25' read it)"),
    ({"special_tokens": "maybe"}, "'keep' or 'drop'"),
])
def test_bad_splade_settings_are_one_message_naming_the_field(fields, expected, experiment_toml):
    path = experiment_toml(name="t", first_stages={"s": {"kind": "splade", "model": TINY, **fields}},
                           datasets=[{"source": "synthetic"}])
    with pytest.raises(BenchError) as err:
        load_experiment(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_a_folder_without_a_masked_lm_head_is_refused_when_the_experiment_is_read(tmp_path, experiment_toml,
                                                                                  tiny_reranker):
    from bench.cli import main

    path = experiment_toml(name="t", first_stages={"s": {"kind": "splade", "model": tiny_reranker}},
                           datasets=[{"source": "synthetic"}])
    with pytest.raises(BenchError, match=r"first_stages\.s\.model: .*not a masked-LM head"):
        load_experiment(path)
    assert main(["run", str(path), "--no-progress"]) == 2
    for other in ("dense", "bm25"):
        bad = experiment_toml(file=f"{other}.toml", name="t", datasets=[{"source": "synthetic"}],
                              first_stages={"s": {"kind": other, "model": "offline:all-MiniLM-L6-v2", "quantize": 100}})
        with pytest.raises(BenchError, match=f"quantize does nothing for kind = '{other}' \\(only kind 'splade' read it\\)"):
            load_experiment(bad)


def test_a_model_without_a_masked_lm_head_is_refused_before_encoding_naming_the_field(tiny_reranker, cache_dir):
    """What cannot be known when the experiment is read (a hub id's config) is checked when the stage
    loads the model, before any passage is encoded: here a folder given to the stage directly."""
    bad = FirstStageSpec.model_construct(**{**spec().model_dump(), "model": tiny_reranker})
    with pytest.raises(BenchError, match=r"first_stages\.s\.model '.*': its config declares "
                                         r"\['XLMRobertaForSequenceClassification'\], not a masked-LM head"):
        SpladeEncoder(bad, cache_dir=cache_dir, where="first_stages.s")


def test_non_finite_weights_are_an_error_naming_the_text(cache_dir, monkeypatch):
    """fp16 logits can overflow: an infinite weight is refused, never written to the cache."""
    import scipy.sparse

    enc = SpladeEncoder(spec(), cache_dir=cache_dir)
    rows = scipy.sparse.csr_matrix(np.array([[0.0, 1.0], [np.inf, 0.0]], dtype=np.float32))
    monkeypatch.setattr(enc.docs, "_fast", lambda texts: rows)
    with pytest.raises(BenchError, match=r"text 1 \('second'\) are not finite.*use bf16 or fp32"):
        enc.encode_docs(["first", "second"])

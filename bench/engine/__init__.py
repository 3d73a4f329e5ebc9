"""The machinery both model-running stages (retrieve, rerank) share.

* ``device``: which devices and which precision a model runs in, resolved once and recorded as resolved;
* ``tokens``: tokenize once with the fast tokenizer, flatten, sort longest first;
* ``batching``: token-budget batches, background tokenization, the out-of-memory budget search;
* ``packed``: a padding-free forward for the BERT family (BERT, RoBERTa, XLM-RoBERTa) that reuses a
  loaded Hugging Face model's parameters;
* ``loop``: the loop that feeds batches to a device and returns outputs in input order;
* ``workers``: one process per device for data-parallel engines (``PooledEngine``);
* ``common``: what both stages check and default to (position limits, the load error, the default
  token budget, the fast engines' option names).

Nothing here imports torch at ``import bench.engine`` time.
"""

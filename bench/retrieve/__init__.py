"""First-stage retrieval: bi-encoder embeddings (cached), exact search, BM25, run files as candidates."""

"""rerank-bench: how good and how fast is a reranking pipeline, in numbers you can trust.

Importing the package is cheap: torch, transformers and ranx are imported only by the stages that
need them, so `bench --help` and `bench report` start instantly.
"""

__version__ = "0.1.0"

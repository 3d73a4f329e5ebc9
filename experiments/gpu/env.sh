# Sourced by the GPU scripts (run_checks.sh, engine_checks.sh) from the repository root, with ROOT,
# SMOKE and OUT set: inputs, offline settings, and PY, a Python with torch (and pydantic 2, installed
# from the carried .whl/ beside the box's Python when it lacks it). Prints what it did; never exits.
export DATA="${DATA:-$ROOT/.gpu/data}"
[ -d "$DATA/miracl-yo-dev" ] || DATA="$ROOT/../shared/data"
if [ -z "${RERANK_BENCH_XLMR_TOKENIZER:-}" ] && [ -f "$ROOT/.gpu/tokenizers/xlm-roberta/tokenizer.json" ]; then
  export RERANK_BENCH_XLMR_TOKENIZER="$ROOT/.gpu/tokenizers/xlm-roberta/tokenizer.json"
fi
if [ -z "${RERANK_BENCH_BERT_TOKENIZER_DIR:-}" ] && [ -d "$ROOT/.gpu/tokenizers/bert-base-uncased" ]; then
  export RERANK_BENCH_BERT_TOKENIZER_DIR="$ROOT/.gpu/tokenizers/bert-base-uncased"
fi
if [ -z "${RERANK_BENCH_QWEN_TIKTOKEN:-}" ] && [ -f "$ROOT/.gpu/tokenizers/qwen.tiktoken" ]; then
  export RERANK_BENCH_QWEN_TIKTOKEN="$ROOT/.gpu/tokenizers/qwen.tiktoken"
fi
# Models are built here, never under $OUT (only results come back).
export RERANK_BENCH_CACHE="${RERANK_BENCH_CACHE:-${TMPDIR:-/tmp}/rerank-bench-gpu-cache$([ "$SMOKE" = 1 ] && echo -smoke)}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-true}"

# The Python that has torch (the GPU box's, or this checkout's .venv).
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in "$ROOT/.venv/bin/python" python3 python; do
    if "$cand" -c "import torch" >/dev/null 2>&1; then PY="$cand"; break; fi
  done
fi
export PYTHONPATH="$ROOT:${PYTHONPATH:-}"
if [ -n "$PY" ]; then
  # pydantic 2 (bench.config) and, on Python 3.10, tomli (bench.config imports tomllib) from the carried
  # wheels when the box lacks them: installed beside, not into, its Python.
  NEED=""
  "$PY" -c "import pydantic, sys; sys.exit(int(pydantic.VERSION.split('.')[0]) < 2)" >/dev/null 2>&1 || NEED="pydantic"
  "$PY" -c "import tomllib" >/dev/null 2>&1 || "$PY" -c "import tomli" >/dev/null 2>&1 || NEED="$NEED tomli"
  if [ -n "$NEED" ]; then
    SITE="$ROOT/.gpu/site"
    echo "missing:$NEED; installing from .whl/ into $SITE"
    "$PY" -m pip install -q --no-index --find-links "$ROOT/.whl" --target "$SITE" $NEED 2>&1 | tail -3
    if ! PYTHONPATH="$SITE" "$PY" -c "import pydantic; import sys; sys.version_info >= (3, 11) or __import__('tomli')" >/dev/null 2>&1; then
      echo "pip could not install it; unpacking the matching wheels directly"
      "$PY" "$ROOT/experiments/gpu/unpack_wheels.py" "$ROOT/.whl" "$SITE"
    fi
    export PYTHONPATH="$ROOT:$SITE:${PYTHONPATH:-}"
  fi
fi

#!/usr/bin/env bash
# The one GPU benchmark command (see experiments/gpu/README.md). From the repository root:
#
#   bash experiments/gpu/run_checks.sh            # on the GPU box: writes to $OUT, ~5-7 minutes
#   bash experiments/gpu/run_checks.sh --smoke    # on any CPU: tiny model, proves the script works
#
# Inputs it reads (prepared by experiments/gpu/prepare.sh into the ignored folders .gpu/ and .whl/,
# which the device call must carry): $DATA (default .gpu/data: a copy of ../shared/data),
# $RERANK_BENCH_XLMR_TOKENIZER (default .gpu/tokenizers/xlm-roberta/tokenizer.json),
# $RERANK_BENCH_BERT_TOKENIZER_DIR (default .gpu/tokenizers/bert-base-uncased), pydantic wheels in .whl/.
# It never fails the call: every step is recorded as ok / failed / skipped, and the short table
# is printed last, even when the Python driver was killed by the time limit.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
SMOKE=0
for a in "$@"; do [ "$a" = "--smoke" ] && SMOKE=1; done

if [ -z "${OUT:-}" ]; then
  OUT="$ROOT/runs/gpu-checks$([ $SMOKE = 1 ] && echo -smoke)"
fi
mkdir -p "$OUT"
LOG="$OUT/log.txt"

export DATA="${DATA:-$ROOT/.gpu/data}"
[ -d "$DATA/miracl-yo-dev" ] || DATA="$ROOT/../shared/data"
if [ -z "${RERANK_BENCH_XLMR_TOKENIZER:-}" ] && [ -f "$ROOT/.gpu/tokenizers/xlm-roberta/tokenizer.json" ]; then
  export RERANK_BENCH_XLMR_TOKENIZER="$ROOT/.gpu/tokenizers/xlm-roberta/tokenizer.json"
fi
if [ -z "${RERANK_BENCH_BERT_TOKENIZER_DIR:-}" ] && [ -d "$ROOT/.gpu/tokenizers/bert-base-uncased" ]; then
  export RERANK_BENCH_BERT_TOKENIZER_DIR="$ROOT/.gpu/tokenizers/bert-base-uncased"
fi
# Models are built here, never under $OUT (only results come back).
export RERANK_BENCH_CACHE="${RERANK_BENCH_CACHE:-${TMPDIR:-/tmp}/rerank-bench-gpu-cache$([ $SMOKE = 1 ] && echo -smoke)}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-true}"

# The Python that has torch (the GPU box's, or this checkout's .venv).
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in "$ROOT/.venv/bin/python" python3 python; do
    if "$cand" -c "import torch" >/dev/null 2>&1; then PY="$cand"; break; fi
  done
fi
{
  echo "rerank-bench GPU checks: $(date -u +%FT%TZ) python=${PY:-none} DATA=$DATA OUT=$OUT smoke=$SMOKE"
  if [ -z "$PY" ]; then echo "no python with torch found; set PYTHON=..."; exit 0; fi
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
  else
    export PYTHONPATH="$ROOT:${PYTHONPATH:-}"
  fi
  LIMIT=$([ $SMOKE = 1 ] && echo 900 || echo 440)
  timeout -k 15 "$LIMIT" "$PY" "$ROOT/experiments/gpu/run_checks.py" --out "$OUT" "$@"
  rc=$?
  [ $rc = 124 ] || [ $rc = 137 ] && echo "the driver hit the ${LIMIT} s limit and was stopped; results.json holds what finished"
  [ $rc != 0 ] && echo "driver exit status $rc"
} 2>&1 | tee "$LOG"
"$PY" "$ROOT/experiments/gpu/run_checks.py" --out "$OUT" --print-only 2>&1 | tee -a "$LOG"
exit 0

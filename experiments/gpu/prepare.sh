#!/usr/bin/env bash
# Prepare, on a machine with this project's .venv and network to PyPI, what run_checks.sh needs on a
# GPU box that has no network and no pydantic: fills the git-ignored folders .gpu/ and .whl/, which
# the device call then carries (about 30 MiB in all). Run from anywhere:
#
#   bash experiments/gpu/prepare.sh
#
# .gpu/data/miracl-yo-dev                  copy of ../shared/data/miracl-yo-dev (the pairs' text)
# .gpu/tokenizers/xlm-roberta/tokenizer.json  XLM-R's tokenizer (random:bge-reranker-large, random:bge-m3)
# .gpu/tokenizers/bert-base-uncased/       bert-base-uncased's tokenizer files (random:bge-base-en-v1.5)
# .gpu/tokenizers/qwen.tiktoken            Qwen's BPE ranks (random:qwen3-reranker-0.6b, decoder_check.py)
# .whl/                                    pydantic and its dependencies for CPython 3.10-3.14, x86_64/aarch64; tomli
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
SHARED="${SHARED_DATA:-$ROOT/../shared/data}"

rm -rf .gpu/data .gpu/tokenizers
mkdir -p .gpu/data .gpu/tokenizers/xlm-roberta .gpu/tokenizers/bert-base-uncased .whl
cp -r "$SHARED/miracl-yo-dev" "$SHARED/vaswani" .gpu/data/
chmod -R u+w .gpu/data

XLMR=$("$PY" -c "from bench import models; print(models.xlmr_tokenizer_file())")
cp "$XLMR" .gpu/tokenizers/xlm-roberta/tokenizer.json
MINILM=$("$PY" -c "from bench import models; print(models.minilm_dir())")
for f in tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json; do
  cp "$MINILM/$f" .gpu/tokenizers/bert-base-uncased/
done
QWEN=$("$PY" -c "from bench.models import decoders; print(decoders.qwen_tiktoken_file())")
cp "$QWEN" .gpu/tokenizers/qwen.tiktoken

for v in 3.10 3.11 3.12 3.13 3.14; do
  for plat in manylinux2014_x86_64 manylinux2014_aarch64; do
    "$PY" -m pip download -q pydantic --only-binary=:all: --implementation cp --python-version "$v" \
      --platform "$plat" -d .whl 2>&1 | grep -v "^WARNING: Location" || true
  done
done

# tomli: the tomllib of Python 3.10 (pure Python), in case the box's Python is older than 3.11
"$PY" -m pip download -q tomli --only-binary=:all: --python-version 3.10 -d .whl 2>&1 | grep -v "^WARNING: Location" || true

echo "prepared:"
du -sh .gpu/data .gpu/tokenizers .whl
echo "carry: [\".gpu/data\", \".gpu/tokenizers\", \".whl\"]"

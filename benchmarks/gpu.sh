#!/usr/bin/env bash
# hypo bench on a GPU: the same comparison as the CPU bench (hypo DPO vs TRL DPOTrainer, with and
# without precomputed reference log-probs; HyPO vs DPO with the FLOP ratio; HyPO vs TRL
# RLOOTrainer; peak memory; FLOP utilisation against a bf16 matmul peak), in bfloat16, on larger
# Llama-style models (medium ≈27M, large ≈205M; add xl ≈1.07B with SIZES="medium large xl").
#
# STATUS: UNCHECKED — written on a CPU-only machine and never run on a GPU yet. The first person
# who runs it: record the figures and any fix in benchmarks/LOG.md and remove this line.
#
# Usage:  bash benchmarks/gpu.sh [extra hypo bench flags]      (from the repository root)
# Env:    SIZES (default "medium large"), OUT (default bench-gpu), BATCH (16), MAXLEN (512),
#         NEWTOK (128), K (2), THREADS (8)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
"$PY" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("benchmarks/gpu.sh: no CUDA device visible to torch (torch %s); install a CUDA build of "
             "torch and run on a GPU machine." % torch.__version__)
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| bf16:", torch.cuda.is_bf16_supported())
PY
"$PY" -c "import trl" 2>/dev/null || { echo "benchmarks/gpu.sh: TRL missing: pip install -e '.[bench]'"; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true

OUT="${OUT:-bench-gpu}"
# 1. The issue's comparison at GPU scale, bf16 weights and bf16 TRL (same precision both sides).
"$PY" -m hypo.bench --cuda --dtype bfloat16 --sizes ${SIZES:-medium large} \
    --batch_size "${BATCH:-16}" --max_length "${MAXLEN:-512}" --max_new_tokens "${NEWTOK:-128}" \
    --num_online_samples "${K:-2}" --threads "${THREADS:-8}" --steps 10 --warmup 3 --repeats 3 \
    --n_records 512 --out "$OUT" "$@"
# 2. Scaling figures around the medium size (step time / memory vs length, batch, k, size).
"$PY" -m hypo.bench --sweep --cuda --dtype bfloat16 --sizes medium --batch_size "${BATCH:-16}" \
    --max_length "${MAXLEN:-512}" --max_new_tokens "${NEWTOK:-128}" --threads "${THREADS:-8}" \
    --steps 5 --warmup 2 --out "$OUT/sweep"
echo "results: $OUT/bench.json, $OUT/sweep/sweep.json, $OUT/sweep/sweep.png — log them in benchmarks/LOG.md"

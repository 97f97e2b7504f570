#!/usr/bin/env bash
# hypo bench on a GPU: the same comparison as the CPU bench (hypo DPO vs TRL DPOTrainer, with and
# without precomputed reference log-probs; HyPO vs DPO with the FLOP ratio; HyPO vs TRL
# RLOOTrainer; peak memory; FLOP utilisation against a bf16 matmul peak), in bfloat16, on larger
# Llama-style models (medium ≈27M, large ≈205M; add xl ≈1.07B with SIZES="medium large xl").
# With 2 or more GPUs it then runs the sharded-training checks (FSDP2, DeepSpeed ZeRO-2/3, DDP) and
# their memory per process (step 3).
#
# STATUS: UNCHECKED — written on a CPU-only machine and never run on a GPU yet. The first person
# who runs it: record the figures and any fix in benchmarks/LOG.md and remove this line.
#
# Usage:  bash benchmarks/gpu.sh [extra hypo bench flags]      (from the repository root)
# Env:    SIZES (default "medium large"), OUT (default bench-gpu), BATCH (16), MAXLEN (512),
#         NEWTOK (128), K (2), THREADS (8), SHARDED_GPUS (0,1: the 2 GPUs of step 3)
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

# 3. Sharded training on 2 GPUs (NCCL): the suite's 2-process checks, which CI runs on CPUs (gloo):
#    FSDP2 (fsdp.yaml) and DeepSpeed ZeRO-3 / ZeRO-2 against one GPU and the unsharded model
#    (tests/sharded/), and DDP (tests/test_distributed.py). Needs deepspeed (the test extra). Their
#    tolerances are float32 rounding bounds: leave TF32 off (torch's default for matmuls). Then the
#    memory per process of DDP, FSDP2 and ZeRO-2/3 (benchmarks/sharded_memory.py; on GPUs it adds
#    the CUDA peak). Record what passes and fails in benchmarks/LOG.md and docs/scale-out.md.
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
  "$PY" -c "import deepspeed" 2>/dev/null || { echo "benchmarks/gpu.sh: deepspeed missing: pip install -e '.[test]'"; exit 2; }
  status=0
  CUDA_VISIBLE_DEVICES="${SHARDED_GPUS:-0,1}" "$PY" -m pytest -q -p no:cacheprovider tests/sharded \
      tests/test_distributed.py tests/test_sharding.py || status=$?
  CUDA_VISIBLE_DEVICES="${SHARDED_GPUS:-0,1}" "$PY" benchmarks/sharded_memory.py \
      --out "$OUT/sharded-memory.json" || status=$?
  echo "sharded checks: exit status $status; memory figures: $OUT/sharded-memory.json"
  exit "$status"
else
  echo "step 3 (sharded training) skipped: it needs 2 GPUs"
fi

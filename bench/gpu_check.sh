#!/usr/bin/env bash
# The GPU figures bench/RESULTS.md still lacks, in one run of about 6-8 minutes on one H100 (issues #7, #8):
#
#   bash bench/gpu_check.sh [OUT_DIR]        # default: $OUT when set (the lent machines set it), else ./gpu-results
#
# Steps, the figures still missing first; each has a time limit and the whole run a budget (BUDGET_S, default
# 540 s), so a slow step costs the ones after it rather than the run. Every step's output goes to
# OUT_DIR/results.txt (its stderr to OUT_DIR/steps.log) and one line to OUT_DIR/summary.txt (exit status and
# seconds); a failed step does not stop the others. Four files in all: the lent machines return at most eight.
# (First H100 run, 2026-12-06: bench/RESULTS.md "GPU: one NVIDIA H100".)
#   cuda_parity  the parity checkpoints on CUDA: float32 reproduces the official outputs, bf16 stays close
#                (needs ../shared/parity beside the repository; skipped otherwise)
#   encode_14b   InternVL-14B-224px shapes, random bf16 weights: InternVL-C/G images/s and MFU (goal >= 0.55 /
#                0.5 of 989 TFLOP/s), text queries/s packed vs pad-80 vs the eager baseline, single query latency
#   ingest_14b   a random InternVL-C written as a 28 GB checkpoint and loaded by the real loader (peak memory vs
#                weights, goal <= 1.1x), then 2048 photos ingested end to end vs model-only (goal >= 0.9)
#   encode_14b_compile  images at batch 64 with torch.compile beside eager (compile time and speed-up)
#   gpu_tests    the CUDA tests (batch size planned from free memory; flat search on the GPU through torch)
#   gpu_search   exact search over 1M x 768 vectors in fp32/fp16 with torch: latency vs the HBM bound (goal <= 2x)
#   chat_1b      InternVL2.5-1B's shapes, random bf16 weights: vision tiles/s, prefill and decode tokens/s
#   openclip_text  open_clip ViT-B-32 text (random weights): texts cut to their real tokens vs padded to 77
#                (needs open_clip on the machine)
#   encode_14b_b128  images only at batch 128 (does MFU still rise past 64?)
#   ingest_12mp  12 MP camera-sized JPEGs through 16 decode workers into a mid-size InternVL-C (224 px, fast enough
#                on a GPU that decoding bounds the job): images/s end to end, and one worker's decode rate with the
#                reduced JPEG decode against every pixel (can 16 cores feed InternVL-C's 134-176 images/s?)
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu-results}}
mkdir -p "$OUT_DIR"
BUDGET=${BUDGET_S:-540}
START=$(date +%s)
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    PY=.venv/bin/python
fi

step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2 left t0 rc
    shift 2
    left=$((BUDGET - ($(date +%s) - START)))
    if [ "$left" -lt 45 ]; then
        echo "$name skipped: budget spent" | tee -a "$OUT_DIR/summary.txt"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (at most ${limit} s): $*"
    t0=$(date +%s)
    echo "== $name" >>"$OUT_DIR/results.txt"
    echo "== $name" >>"$OUT_DIR/steps.log"
    timeout "$limit" "$@" >>"$OUT_DIR/results.txt" 2>>"$OUT_DIR/steps.log"
    rc=$?
    echo "$name exit=$rc seconds=$(($(date +%s) - t0))" | tee -a "$OUT_DIR/summary.txt"
    tail -n 3 "$OUT_DIR/steps.log"
}

{
    nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.max.sm,power.limit --format=csv 2>&1
    "$PY" -c 'import platform, torch; print("python", platform.python_version(), "torch", torch.__version__,
"cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "no cuda")' 2>&1
    for module in transformers faiss fastapi sentencepiece safetensors open_clip pytest; do
        "$PY" -c "import $module; print('$module', getattr($module, '__version__', 'present'))" 2>/dev/null ||
            echo "$module missing"
    done
    nproc
    uptime
} >"$OUT_DIR/environment.txt"
cat "$OUT_DIR/environment.txt"

step cuda_parity 90 "$PY" -m pytest -q -s -m gpu -p no:cacheprovider tests/models/test_cuda_parity.py
step encode_14b 240 "$PY" -m bench.encode --config 14b --device cuda --image-batch 64 --text-batch 128 --seconds 2 --json
step ingest_14b 240 "$PY" -m bench.ingest --random-internvl 14b --device cuda --images 2048 --batch 64 --seconds 3 --json
step encode_14b_compile 240 "$PY" -m bench.encode --config 14b --device cuda --image-batch 64 --text-batch 8 --seconds 2 \
    --compile --json
step gpu_tests 90 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/models/test_memory.py tests/indexer/test_flat_torch_search.py
step gpu_search 90 "$PY" -m bench.gpu_search --sizes 1000000 --dim 768
step chat_1b 90 "$PY" -m bench.chat --config 1b --device cuda --seconds 2
step openclip_text 60 "$PY" -m bench.encode --openclip ViT-B-32 --device cuda --text-batch 128 --seconds 2 --json
step encode_14b_b128 120 "$PY" -m bench.encode --config 14b --device cuda --image-batch 128 --text-batch 8 --seconds 2 \
    --json
step ingest_12mp 180 "$PY" -m bench.ingest --random-internvl mid --device cuda --size 4032x3024 --images 128 --batch 64 \
    --workers 16 --seconds 1 --json
echo "total seconds=$(($(date +%s) - START))" | tee -a "$OUT_DIR/summary.txt"

#!/usr/bin/env bash
# Every drafter family on the `make demo` pair (runs/gsm8k/demo, a Llama pair vLLM serves): trains an EAGLE-3
# head, an EAGLE-1 head, MTP modules, Medusa heads and a DFlash head (block 4) with plain KD on the demo
# target (each resumable: rerun to continue), then benchmarks them beside the DistillSpec and AdaSPEC draft
# models in adaspec's engine (results/benchmarks/drafters_demo.json and .png) and, with ENGINE=vllm (the
# default when .venv-vllm exists: `make vllm`), in vLLM on the same GSM8K prompts
# (results/benchmarks/vllm_demo.json).
#   bash benchmarks/demo_drafters.sh        (after `make demo`; STEPS=100 by default, the committed heads)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
RUN=runs/gsm8k/demo
STEPS=${STEPS:-100}
ENGINE=${ENGINE:-$([ -x .venv-vllm/bin/python ] && echo vllm || echo adaspec)}
COMMON=(--target "$RUN/target" --task gsm8k --max-length 256 --batch-size 16 --max-steps "$STEPS" --lr 2e-3
        --val-every 50 --val-examples 16 --val-max-new-tokens 64 --no-progress)
export OMP_NUM_THREADS=1
"$BIN/adaspec" train-head --kind eagle --ttt-steps 4 "${COMMON[@]}" --output "$RUN/heads/eagle"
"$BIN/adaspec" train-head --kind eagle --variant eagle1 --ttt-steps 4 "${COMMON[@]}" --output "$RUN/heads/eagle1"
"$BIN/adaspec" train-head --kind mtp --depth 3 "${COMMON[@]}" --output "$RUN/heads/mtp"
"$BIN/adaspec" train-head --kind medusa --depth 3 "${COMMON[@]}" --output "$RUN/heads/medusa"
"$BIN/adaspec" train-head --kind dflash --block-size 4 "${COMMON[@]}" --output "$RUN/heads/dflash"
"$BIN/python" benchmarks/drafters.py --target "$RUN/target" --pair demo --engine "$ENGINE" \
    --draft distillspec="$RUN/seed0/distillspec" adaspec="$RUN/seed0/adaspec" \
    --head eagle="$RUN/heads/eagle" eagle:eagle1="$RUN/heads/eagle1" mtp="$RUN/heads/mtp" medusa="$RUN/heads/medusa" \
    dflash="$RUN/heads/dflash" \
    --tasks gsm8k cnn_dailymail mbpp --n-prompts 10 --max-new-tokens 96 --gamma 3 --temperatures 0 1 --repeats 3

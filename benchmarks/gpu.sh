#!/usr/bin/env bash
# The drafters benchmark on a CUDA machine, bf16, in under 10 minutes; prints one JSON (and writes
# results/benchmarks/drafters_gpu.json). Run only where a GPU is lent: needs the trained demo pair and heads
# (`make demo` then `bash benchmarks/demo_drafters.sh`; carry runs/gsm8k/demo/{target,seed0/distillspec,
# seed0/adaspec,heads} to the machine) and torch with CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/gsm8k/demo}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'benchmarks/gpu.sh: no CUDA device')"
heads=()
for kind in eagle mtp medusa; do [ -d "$RUN/heads/$kind" ] && heads+=("$kind=$RUN/heads/$kind"); done
timeout 570 "$PY" benchmarks/drafters.py --target "$RUN/target" --pair gpu --dtype bfloat16 \
    --draft distillspec="$RUN/seed0/distillspec" adaspec="$RUN/seed0/adaspec" ${heads[@]:+--head "${heads[@]}"} \
    --tasks gsm8k --n-prompts 10 --max-new-tokens 96 --gamma 3 --temperatures 0 1 --repeats 3 >&2
cat results/benchmarks/drafters_gpu.json

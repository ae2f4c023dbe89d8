#!/usr/bin/env bash
# Every drafter on the `small` GSM8K pair, after
#   adaspec reproduce --task gsm8k --preset small --heads eagle mtp medusa --results-dir results/heads
# (runs/gsm8k/small): the first seed's draft models and heads side by side,
#   results/benchmarks/drafters_small.json          γ = 3, every drafter, greedy and temperature 1
#   results/benchmarks/drafters_small_gamma5.json   γ = 5: the draft models and EAGLE heads (MTP and Medusa
#                                                   have γ = 3 depths and refuse more)
#   results/benchmarks/tree_small.json              token trees against chains γ = 2..6 (PART=tree)
#   bash benchmarks/small_drafters.sh   [PART=chain|tree|all, default all]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
RUN=runs/gsm8k/small
S=$RUN/seed0
PART=${PART:-all}
export OMP_NUM_THREADS=1
DRAFTS=(distillspec="$S/distillspec" adaspec="$S/adaspec")
EAGLES=(eagle="$S/heads/eagle" eagle:eagle_adaspec="$S/heads/eagle_adaspec" eagle:eagle1="$S/heads/eagle1")
MULTI=(mtp="$S/heads/mtp" mtp:mtp_adaspec="$S/heads/mtp_adaspec" medusa="$S/heads/medusa")
if [[ $PART != tree ]]; then
    "$BIN/python" benchmarks/drafters.py --target "$RUN/target" --pair small --draft "${DRAFTS[@]}" \
        --head "${EAGLES[@]}" "${MULTI[@]}" --tasks gsm8k --n-prompts 10 --max-new-tokens 96 --gamma 3 \
        --temperatures 0 1 --repeats 3
    "$BIN/python" benchmarks/drafters.py --target "$RUN/target" --pair small --draft "${DRAFTS[@]}" \
        --head "${EAGLES[@]}" --tasks gsm8k --n-prompts 10 --max-new-tokens 96 --gamma 5 --temperatures 0 \
        --repeats 3 --out results/benchmarks/drafters_small_gamma5.json
fi
if [[ $PART != chain ]]; then
    "$BIN/python" benchmarks/tree.py --target "$RUN/target" --pair small --draft adaspec="$S/adaspec" \
        --head eagle="$S/heads/eagle_adaspec" mtp="$S/heads/mtp_adaspec" medusa="$S/heads/medusa" \
        --n-prompts 6 --max-new-tokens 96 --repeats 3
fi

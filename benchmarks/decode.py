"""Greedy decoding speed on the same prompts, side by side in one run: a thin wrapper over
adaspec.evaluation.speed (see its docstring for the methods and flags).

    python benchmarks/decode.py --target DIR --draft DIR [--prompts-task gsm8k | --prompts-file F]

Profiling notes
---------------
Measured on the shared 2-core CPU box (1 torch thread, torch 2.13 CPU, transformers 5.23); absolute
tokens/s drift ~2x with other users' load, ratios are measured side by side and were stable to ~2%.

Pair: throwaway GPT-NeoX models trained here for ~10 CPU-minutes on GSM8K train text with a 2048-token
byte-level BPE (adaspec.data.train_tokenizer), not committed: target `neox-target-m` (5.8M params, 6 layers,
train loss ~3.8), draft `neox-draft-xs` (0.36M, 2 layers, loss ~3.5). Both are undertrained: greedy output is
repetitive ("of the number of the number ..."), which makes acceptance position-dependent (0.97 / 0.83 / 0.18
at draft positions 1-3 for γ = 3). Run: 10 GSM8K test prompts, greedy, 128 new tokens, stop at EOS, 3 repeats:

    method        tok/s   vs target-only
    target_only   211.3   1.00x   adaspec KV-cached loop
    hf_target     186.3   0.88x   transformers generate(), same model
    sd (γ=3)      268.2   1.27x   α 0.66, τ 2.96, c 0.173, S 1.57
    sd_adaptive   261.5   1.24x   γ mostly 3 (hist 1:3 2:30 3:1035 4:133 5+:76)
    hf_assisted   199.2   0.94x   slower than the target alone, as in transformers#36337

Every output of sd, sd_adaptive, hf_target and hf_assisted equalled target-only greedy (0 mismatches).
γ sweep (1 repeat each): γ=1 1.07x, γ=2 1.37x, γ=3 1.27x, γ=4 1.13x, γ=6 1.02x over target-only;
sd / hf_assisted = 1.33-1.40x at every γ.

Against the goals: sd is 1.35x HF assisted generation (goal >= 1.3x: met). Measured / S = 0.81 (goal >= 0.9:
NOT met on this CPU), for a reason outside the decode loop: S assumes that verifying γ+1 tokens costs one
target forward, but here the cached target forward costs 4.23 ms for 1 token and 6.71 ms for 4 tokens (1.59x;
single-thread small-M GEMMs and the elementwise ops grow with the token count); the draft costs 1.02 ms. With
those measured costs the step cost model τ·T1 / (γ·D1 + T4) predicts 1.29x, and sd measures 1.27x: the loop
runs at ~98% of what its forwards allow. At batch 1 on a GPU, verification is memory-bound (T4 ≈ T1), so
measured / S should approach that ratio there; not measured (no GPU was available to this task).

Where sd's decode time goes (γ = 3): draft forwards 33.5%, target verification 65%, everything else 1.6%
(acceptance on the device, one host sync per step via .tolist(), cache crop, counters; ~0.3 ms per step in
cProfile). Nothing is recomputed: caches are cropped (views, O(1)) and the draft catches up on the 1-2 tokens
it has not seen in its first forward of the next step; prefill/verification ask only for the logits they use
(logits_to_keep). DynamicCache grows by torch.cat, ~6% of a forward here; a preallocated-buffer cache layer was
tried (-12% at 4 tokens, no change at 1 token) and not adopted, as it depends on transformers' cache internals.

Why HF assisted generation is slow here (cProfile, 4 prompts): each step runs a nested generate() for the
assistant (argument validation, special-token setup, logits processors, stopping criteria) plus an extra
assistant forward to ingest the newly accepted tokens; candidate generation took 2.7 s of 5.2 s. Its plain
generate() loop is itself 0.88x of ours.

Adaptive γ maximises Leviathan's S with c measured per verification forward; it does not model that
verification gets dearer with γ on CPU, so it settles at γ ≈ 3 although γ = 2 is the best fixed choice here.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adaspec.evaluation.speed import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

"""Constants of token selection that options dataclasses declare at import time (a flag's default, its help
text), kept apart from adaspec.distill.selection so building a command's parser imports no torch."""

from __future__ import annotations

# share of the optimizer steps the "warmup" schedule trains on every token
WARMUP_FRACTION = 0.5
# default temperature of soft selection, in units of the rank quantile: weight 0.95 at 0.3 above the cut
SOFT_TEMPERATURE = 0.1

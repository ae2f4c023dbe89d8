"""A drafter family as one spec: everything the rest of adaspec asks of a draft model, EAGLE, MTP, Medusa or
DFlash, so that no code outside a family's folder names the family or tests for its classes.

Adding a family is one folder whose `__init__.py` builds its `FAMILY` (this dataclass) plus one line in
`adaspec.drafters.FAMILIES`. Callers look a family up by name (`FAMILIES[kind]`), by the checkpoint it wrote
(`adaspec.drafters.loading.saved_family`) or by a drafter it made (`adaspec.drafters.drafter_family`), and then
only call what the spec holds:

- loading: `drafter.load(path, target, vocab)` gives the decoding engine's drafter; `head` is the trained
  module (`from_pretrained(path)` / `save_pretrained(path)`), None for a draft model (a transformers model);
  `recognizes(config)` says whether a config.json is this family's train-head checkpoint.
- serving: `exports[server](saved folder, target, folder to write)` writes the drafter in the layout that
  server loads ("vllm", "sglang"), float32, and returns the method the server is given; `unserved[server]`
  says why a server has none; `target_problem` why vLLM cannot serve it on a given target; `export_command`
  is `adaspec export` of a checkpoint (any dtype, format and server the user asks for).
- training: `recipe` trains it (`distill`, or the module of adaspec.recipes.train_head); `train_options(γ,
  target config)` the train-head options of a head that drafts γ tokens per step; `max_gamma(head)` the most
  a trained head drafts per step (None: unbounded), which its drafter's `max_gamma` is; `signal` what it
  reads of the target: nothing, the final normed state (FINAL), or the layers its config names (EAGLE-3 /
  DFlash auxiliary layers; EAGLE-1 the final state).
- train-head (adaspec.recipes.train_head): `train_shape(γ, unroll)` the options sizing a head for γ tokens per
  step whose training unrolls `unroll` steps where the family unrolls (EAGLE's training-time test), as the
  paper pipeline budgets its heads; `default_depth` its --depth when none is given; `takes_draft_init` /
  `takes_target_data` whether it starts from a saved head (--draft-init) / trains on the target's responses
  (--data-source target); for the multi-token recipe, `new_head(target, options)` an untrained head (the
  caller seeds torch's generator), `misfit(head, target)` why a saved head does not fit the target beyond its
  hidden size, and `store_target_head(path, target)` writes the target's output head into a saved head that
  shares it (vLLM reads it from the checkpoint). `target_layers(named)` the layers its `signal` reads.
- measuring: `teacher_forced(drafter, depth)` its depths teacher-forced on the target's features
  (adaspec.evaluation.head_acceptance), where it has such a forward; `keep_tree_rows(drafter)` the same
  drafter keeping the accepted path's tree rows instead of re-running them, where it can.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from transformers import PreTrainedModel

from adaspec.errors import AdaspecError, NotServable
from adaspec.models.target import FINAL

SERVERS = ("vllm", "sglang")
Signal = Literal["none", "final", "layers"]
# (hidden [B, T, layers * H]: the drafter's target layers concatenated, ids [B, T]) -> per-depth logits over the
# target's vocabulary, depth k at position i proposing token i+k+1
HeadForward = Callable[[Tensor, Tensor], list[Tensor]]


@dataclass(frozen=True)
class Served:
    """A drafter written in a server's layout: the method the server is given and the folder it loads."""

    method: str
    model: str


# (saved drafter folder, its target, folder to write) -> what the server is given; NotServable where this
# target or this checkpoint rules the server out
Write = Callable[[str, PreTrainedModel, Path], Served]
# (the target's config, a given drafter's own config or None) -> why vLLM cannot serve the family there, or None
TargetProblem = Callable[[dict[str, Any], dict[str, Any] | None], str | None]


@dataclass(frozen=True)
class ExportRequest:
    """`adaspec export` of one checkpoint, as the user asked for it (adaspec.recipes.export.ExportOptions)."""

    head: str
    output: str
    format: str | None  # an EAGLE variant; other families refuse one
    server: str
    dtype: torch.dtype
    target: str | None

    def target_config(self) -> dict[str, Any] | None:
        if self.target is None:
            return None
        try:
            return json.loads((Path(self.target) / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise AdaspecError(f"--target {self.target} has no readable config.json") from exc

    def target_model(self) -> PreTrainedModel | None:
        if self.target is None:
            return None
        from adaspec.models import load_model  # transformers' model code only when a target is needed

        return load_model(self.target)

    def refuse_format(self, holds: str) -> None:
        if self.format is not None:
            raise AdaspecError(f"--format is for EAGLE heads; {self.head} holds {holds} heads")


@dataclass(frozen=True)
class Family:
    """One drafter family (module docstring)."""

    name: str
    drafter: type  # `load(path, target, vocab)`; every drafter of the family is of this class
    signal: Signal
    recipe: str  # "distill", or the adaspec.recipes.train_head module that trains it
    head: type | None = None
    recognizes: Callable[[dict[str, Any]], bool] | None = None
    exports: Mapping[str, Write] = field(default_factory=dict)
    unserved: Mapping[str, str] = field(default_factory=dict)
    target_problem: TargetProblem | None = None
    export_command: Callable[[ExportRequest], None] | None = None
    train_options: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None
    max_gamma: Callable[[Any], int | None] = lambda head: None
    build_opt_in: str | None = None  # why `adaspec build` trains it only when --drafters names it
    teacher_forced: Callable[[Any, int], HeadForward] | None = None
    keep_tree_rows: Callable[[Any], Any] | None = None
    train_shape: Callable[[int, int], dict[str, Any]] | None = None
    default_depth: int | None = None
    takes_draft_init: bool = False
    takes_target_data: bool = False
    new_head: Callable[[PreTrainedModel, Any], Any] | None = None
    misfit: Callable[[Any, PreTrainedModel], str | None] = lambda head, target: None
    store_target_head: Callable[[str, PreTrainedModel], None] | None = None

    @property
    def is_draft_model(self) -> bool:
        """A separate causal LM (a transformers model: eval's --draft), not a head on the target (--head)."""
        return self.head is None

    def target_layers(self, named: tuple[int, ...] = ()) -> tuple[int, ...]:
        """The target layers a head of the family reads (its `signal`): the final normed state, or the layers
        its config names (`named`); none for a draft model."""
        if self.signal == "final":
            return (FINAL,)
        return named if self.signal == "layers" else ()

    def why_not_served(self, server: str) -> str:
        return self.unserved.get(server, f"no {server} layout for {self.name} drafters")

    def vllm_problem(self, target: dict[str, Any], drafter: dict[str, Any] | None = None) -> str | None:
        """Why vLLM cannot serve this family on `target` (a given drafter's own config: `drafter`), or None."""
        if "vllm" not in self.exports:
            return self.why_not_served("vllm")
        return self.target_problem(target, drafter) if self.target_problem else None

    def serve(self, server: str, path: str, target: PreTrainedModel, out: Path) -> Served:
        """The drafter saved in `path` written in `server`'s layout under `out`; NotServable when it has none."""
        write = self.exports.get(server)
        if write is None:
            raise NotServable(self.why_not_served(server))
        return write(path, target, out)

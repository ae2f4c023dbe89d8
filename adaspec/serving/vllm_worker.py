"""One vLLM measurement, run inside vLLM's own environment (`make vllm`), never imported by adaspec.

adaspec pins a newer transformers than vLLM accepts, so the engine lives in its own virtualenv and this
file is its whole interface: `python vllm_worker.py JOB.json OUT.json`. It imports only the standard
library and vLLM. The job names the target, an optional `speculative_config`, prompts as token ids and the
sampling; the result holds, per temperature and batch size, the generated ids, the median wall time over
`repeats` passes and vLLM's own speculative counters (differences of its Prometheus counters around the
timed passes, so the warm-up is not counted; every pass repeats the same seeded requests).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

SPEC_COUNTERS = {
    "vllm:spec_decode_num_drafts": "drafts",
    "vllm:spec_decode_num_draft_tokens": "draft_tokens",
    "vllm:spec_decode_num_accepted_tokens": "accepted",
}
PER_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos"


def snapshot(llm: Any) -> dict[str, Any]:
    """vLLM's cumulative speculative counters, summed over engines."""
    out: dict[str, Any] = {name: 0 for name in SPEC_COUNTERS.values()}
    out["accepted_per_position"] = []
    for metric in llm.get_metrics():
        if metric.name in SPEC_COUNTERS:
            out[SPEC_COUNTERS[metric.name]] += int(metric.value)
        elif metric.name == PER_POSITION:
            values = [int(v) for v in metric.values]
            old = out["accepted_per_position"]
            out["accepted_per_position"] = [a + b for a, b in zip(values, old + [0] * (len(values) - len(old)))]
    return out


def difference(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    out = {k: after[k] - before[k] for k in SPEC_COUNTERS.values()}
    old = before["accepted_per_position"]
    out["accepted_per_position"] = [
        a - (old[i] if i < len(old) else 0) for i, a in enumerate(after["accepted_per_position"])
    ]
    return out


def main(job_path: str, out_path: str) -> int:
    # run as a script, this file's folder is sys.path[0]: adaspec's own modules must not shadow vLLM's
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    job = json.loads(open(job_path).read())
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(job.get("kv_cache_gib", 1)))
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(
        model=job["target"],
        tokenizer=job["target"],
        skip_tokenizer_init=True,
        speculative_config=job.get("speculative_config"),
        max_model_len=job["max_model_len"],
        max_num_seqs=max(job["batch_sizes"]),
        enforce_eager=job.get("eager", False),
        disable_log_stats=False,
        seed=job.get("seed", 0),
        dtype=job.get("dtype", "float32"),
    )
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in job["prompts"]]
    stop = job.get("eos_token_id")

    def params(i: int, temperature: float) -> Any:
        return SamplingParams(
            max_tokens=job["max_tokens"],
            temperature=temperature,
            seed=job.get("seed", 0) + i,
            ignore_eos=stop is None,
            stop_token_ids=[stop] if stop is not None else None,
            detokenize=False,
        )

    llm.generate(prompts[:1], params(0, 0.0), use_tqdm=False)  # warm-up: allocation and first-call costs
    runs = []
    for temperature in job["temperatures"]:
        for batch in job["batch_sizes"]:
            before = snapshot(llm)
            times, outputs = [], []
            for _ in range(job.get("repeats", 1)):  # the same seeded requests again: the median time is kept
                outputs = []
                start = time.perf_counter()
                for lo in range(0, len(prompts), batch):
                    chunk = prompts[lo : lo + batch]
                    results = llm.generate(
                        chunk, [params(lo + j, temperature) for j in range(len(chunk))], use_tqdm=False
                    )
                    outputs += [list(r.outputs[0].token_ids) for r in results]
                times.append(time.perf_counter() - start)
            runs.append(
                {
                    "temperature": temperature,
                    "batch": batch,
                    "seconds": statistics.median(times),
                    "seconds_each": times,
                    "tokens": sum(map(len, outputs)),
                    "outputs": outputs,
                    "counters": difference(snapshot(llm), before),
                }
            )
    result = {"vllm_version": vllm.__version__, "runs": runs}
    with open(out_path + ".tmp", "w") as fh:
        json.dump(result, fh)
    os.replace(out_path + ".tmp", out_path)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: vllm_worker.py JOB.json OUT.json")
    sys.exit(main(sys.argv[1], sys.argv[2]))

"""Peak memory and time of the per-token divergence, forward + backward: chunked vs naive full-fp32.

Every measurement runs in a fresh subprocess (nothing cached from another variant). Memory: the child
builds the bf16 target and draft logits, runs the same code once on a tiny input (so first-use costs such
as library pages are not counted), resets the kernel's peak-RSS counter (/proc/self/clear_refs, falling
back to getrusage's max RSS where that is not allowed), runs forward + backward once and reports peak RSS
minus the RSS before: everything the loss allocates, the bf16 gradient of the draft logits included. The
memory child runs with a fixed glibc mmap threshold so RSS follows live tensors rather than the heap's
high-water mark. Time: a second child with the default allocator times `--repeats` passes after one
untimed pass and reports the median.

    python benchmarks/loss_memory.py                       # 4 x 512 tokens, 50k vocabulary, fkl
    python benchmarks/loss_memory.py --kind jsd --chunks 256 2048
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaspec.distill.losses import _chunk_rows, per_token_divergence  # noqa: E402


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_kb(reset_ok: bool) -> int:
    if reset_ok:
        return _status_kb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def naive(kind: str, target: torch.Tensor, draft: torch.Tensor, temperature: float) -> torch.Tensor:
    """What a straightforward trainer does: whole-tensor fp32 log-softmaxes, autograd keeps them."""
    lp = F.log_softmax(target.float() / temperature, dim=-1)
    lq = F.log_softmax(draft.float() / temperature, dim=-1)
    if kind == "fkl":
        return F.kl_div(lq, lp, reduction="none", log_target=True).sum(-1)
    if kind == "rkl":
        return F.kl_div(lp, lq, reduction="none", log_target=True).sum(-1)
    if kind == "tvd":
        return 0.5 * (lp.exp() - lq.exp()).abs().sum(-1)
    lm = torch.logsumexp(torch.stack([lp + torch.log(torch.tensor(0.5)), lq + torch.log(torch.tensor(0.5))]), 0)
    return 0.5 * F.kl_div(lm, lp, reduction="none", log_target=True).sum(-1) + 0.5 * F.kl_div(
        lm, lq, reduction="none", log_target=True
    ).sum(-1)


def child(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = (args.batch, args.seq, args.vocab)
    # filled in place, so building the inputs leaves no fp32 temporaries behind
    target = torch.empty(shape, dtype=torch.bfloat16).normal_(0, 3)
    draft = torch.empty(shape, dtype=torch.bfloat16).normal_(0, 3).requires_grad_()

    def step(target: torch.Tensor, draft: torch.Tensor) -> None:
        if args.variant == "naive":
            out = naive(args.kind, target, draft, args.temperature)
        else:
            size = args.variant.split("-")[1]
            out = per_token_divergence(
                args.kind, target, draft, args.temperature, chunk_tokens=None if size == "default" else int(size)
            )
        out.mean().backward()
        draft.grad = None

    # the same code path on a tiny input first, so first-use costs (library pages, thread pools) are not
    # counted as memory of the loss
    step(target[:1, :2].clone(), draft.detach()[:1, :2].clone().requires_grad_())
    if args.measure == "memory":
        rss_before = _status_kb("VmRSS")
        reset_ok = _reset_peak()
        step(target, draft)
        peak = _peak_kb(reset_ok)
        return {
            "peak_growth_mib": round((peak - rss_before) / 1024, 1),
            "rss_before_mib": round(rss_before / 1024, 1),
            "peak_method": "VmHWM after /proc/self/clear_refs" if reset_ok else "getrusage ru_maxrss",
        }
    step(target, draft)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step(target, draft)
        times.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(times), 3), "times_s": [round(t, 3) for t in times]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--kind", default="fkl", choices=["fkl", "rkl", "tvd", "jsd"])
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument(
        "--chunks",
        type=int,
        nargs="+",
        default=[32, 128, 512, 2048],
        help="fixed chunk sizes (rows) to compare besides the default and the naive version",
    )
    ap.add_argument("--repeats", type=int, default=3)
    # one thread by default: on a shared, busy machine OpenMP threads spin against each other and
    # timings stop meaning anything
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "loss_memory.json"))
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    ap.add_argument("--measure", choices=["memory", "time"], help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.variant:
        print(json.dumps(child(args)))
        return

    tokens = args.batch * args.seq
    load_before = os.getloadavg()
    variants = ["naive", "chunked-default"] + [f"chunked-{c}" for c in args.chunks]
    rows = []
    for variant in variants:
        row = {"variant": variant}
        for measure in ("memory", "time"):
            cmd = [
                sys.executable,
                __file__,
                "--variant",
                variant,
                "--measure",
                measure,
                "--batch",
                str(args.batch),
                "--seq",
                str(args.seq),
                "--vocab",
                str(args.vocab),
                "--kind",
                args.kind,
                "--temperature",
                str(args.temperature),
                "--repeats",
                str(args.repeats),
                "--threads",
                str(args.threads),
            ]
            env = dict(os.environ)
            if measure == "memory":
                # every large tensor its own mapping, returned to the OS when freed
                env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
            res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            row.update(json.loads(res.stdout.strip().splitlines()[-1]))
        rows.append(row)
        print(f"{variant:>14}: peak +{row['peak_growth_mib']:8.1f} MiB   median {row['median_s']:.3f} s", flush=True)

    fp32_mib = tokens * args.vocab * 4 / 2**20
    bf16_mib = tokens * args.vocab * 2 / 2**20
    report = {
        "command": " ".join(
            shlex.quote(a)
            for a in [
                os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else "python",
                os.path.relpath(__file__, ROOT),
                *sys.argv[1:],
            ]
        ),
        "what": "per-token divergence forward + backward (loss = mean), bf16 logits on CPU; peak RSS growth "
        "over the RSS with inputs allocated, measured in a fresh subprocess per variant",
        "kind": args.kind,
        "tokens": tokens,
        "default_chunk_rows": _chunk_rows(None, args.vocab),
        "shape": [args.batch, args.seq, args.vocab],
        "input_dtype": "bfloat16",
        "one_fp32_logits_tensor_mib": round(fp32_mib, 1),
        "one_bf16_logits_tensor_mib": round(bf16_mib, 1),
        "repeats": args.repeats,
        "malloc": "memory children: MALLOC_MMAP_THRESHOLD_=1048576; timing children: default",
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        # timings from a shared machine are only as quiet as its load
        "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

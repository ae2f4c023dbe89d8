"""What one cached decode forward costs: HF (DynamicCache) vs the lean path vs a compiled lean step.

One forward of n new tokens after a cached prefix is what speculative decoding pays per draft token
(n = 1) and per verification (n = γ+1), so these medians are the inputs of its speed model. Methods run
in a rotating order inside each repeat, so load drift on a shared machine hits them alike.

`compiled` is gpt-fast's recipe applied to the lean weights: static shapes (one graph per n), the new
keys written with index_copy_ at tensor positions and attention over the whole preallocated cache under
a mask, so the prefix length is data rather than a shape and `torch.compile(fullgraph=True)` never
recompiles. Its compile time (first call per shape, cold inductor cache when run from
benchmarks/forward_cost.py) is measured and reported on its own.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from adaspec.errors import AdaspecError
from adaspec.models import build_model, count_params
from adaspec.models.lean import LeanLM
from adaspec.models.lean.ops import rotate
from adaspec.models.target import CachedLM


class CompiledNeoxStep:
    """A torch.compile'd static-shape decode step over a GPT-NeoX `LeanLM`'s weights and cache."""

    def __init__(self, lean: LeanLM):
        if lean.family != "gpt_neox":
            raise AdaspecError(f"the compiled step is written for GPT-NeoX only, not {lean.family}")
        self.lean = lean
        self._step = torch.compile(self._eager_step, fullgraph=True, dynamic=False)

    def _eager_step(self, tokens: Tensor, rows: Tensor, mask: Tensor, keep: int) -> Tensor:
        lm = self.lean
        T, hd = tokens.shape[0], lm.head_dim
        x = F.embedding(tokens, lm._embed)
        H = x.shape[1]
        cos, sin = lm._cos.index_select(0, rows)[:, None], lm._sin.index_select(0, rows)[:, None]
        for i, w in enumerate(lm._layers):
            qkv = F.linear(F.layer_norm(x, (H,), w.input_norm, w.input_norm_bias, w.input_eps), w.qkv, w.qkv_bias).view(
                T, lm.heads, 3, hd
            )
            qk = rotate(qkv[:, :, :2].reshape(T, 2 * lm.heads, hd), lm._perm, cos, sin).view(T, lm.heads, 2, hd)
            keys, values = lm.cache.keys[i], lm.cache.values[i]
            keys.index_copy_(1, rows, qk[:, :, 1].transpose(0, 1))
            values.index_copy_(1, rows, qkv[:, :, 2].transpose(0, 1))
            a = F.scaled_dot_product_attention(
                qk[:, :, 0].transpose(0, 1)[None], keys[None], values[None], attn_mask=mask, scale=w.scale
            )
            a = F.linear(a[0].transpose(0, 1).reshape(T, H), w.dense, w.dense_bias)
            if w.parallel:
                x = w.mlp(F.layer_norm(x, (H,), w.post_norm, w.post_norm_bias, w.post_eps)) + a + x
            else:
                a = a + x
                x = w.mlp(F.layer_norm(a, (H,), w.post_norm, w.post_norm_bias, w.post_eps)) + a
        weight, bias = lm._head
        return F.linear(lm._final_norm(x[-keep:]), weight, bias).float()

    @torch.inference_mode()
    def forward(self, tokens: Tensor, keep: int = 1) -> tuple[Tensor, None]:
        lm = self.lean
        s, e = lm.seen, lm.seen + tokens.shape[0]
        lm._reserve(e)
        rows = lm._arange[s:e]
        mask = lm._arange[None, :] <= rows[:, None]  # [T, capacity]: the prefix and new tokens up to each
        logits = self._step(tokens.to(lm.device), rows, mask, keep)
        lm.seen = e
        return logits, None

    def crop(self, length: int) -> None:
        self.lean.crop(length)


def _clock(device: torch.device) -> Callable[[], float]:
    if device.type == "cuda":

        def now() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()

        return now
    return time.perf_counter


@torch.inference_mode()
def measure_forward_cost(
    presets: Sequence[str],
    vocab: int = 2048,
    prefix: int = 128,
    sizes: Sequence[int] = (1, 4, 16),
    repeats: int = 60,
    warmup: int = 5,
    compiled: bool = False,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """Median ms of one cached forward of each size in `sizes` after `prefix` cached tokens, per preset
    and method (wall clock, and on CPU also this thread's CPU time); each method's ratio to HF and, for
    `compiled`, the compile time per size."""
    out: dict = {}
    dev = torch.device(device)
    now = _clock(dev)
    for preset in presets:
        model = build_model(preset, vocab, seed=seed).to(dev)
        capacity = prefix + max(sizes)
        methods = {"hf": CachedLM(model, vocab, preset), "lean": LeanLM(model, vocab, preset)}
        if compiled:
            torch._dynamo.reset()  # each preset compiles from scratch (and stays under the recompile limit)
            methods["compiled"] = CompiledNeoxStep(LeanLM(model, vocab, preset, max_length=capacity))
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, vocab, (capacity,), generator=gen).to(dev)
        for lm in methods.values():  # prefill eagerly: only the decode step is compiled
            getattr(lm, "lean", lm).forward(ids[:prefix])
        compile_s = {}
        if compiled:
            for n in sizes:  # the first call per shape compiles; timed on its own, not hidden in warm-up
                methods["compiled"].crop(prefix)
                t0 = now()
                methods["compiled"].forward(ids[prefix : prefix + n], keep=n)
                compile_s[str(n)] = now() - t0
        times: dict[str, dict[int, list[float]]] = {m: {n: [] for n in sizes} for m in methods}
        cpu: dict[str, dict[int, list[float]]] = {m: {n: [] for n in sizes} for m in methods}
        names = list(methods)
        for r in range(warmup + repeats):
            for n in sizes:  # methods innermost, so a burst of load on the machine hits them alike
                for j in range(len(names)):
                    name = names[(r + j) % len(names)]
                    lm = methods[name]
                    lm.crop(prefix)
                    t0, c0 = now(), time.thread_time()
                    lm.forward(ids[prefix : prefix + n], keep=n)
                    if r >= warmup:
                        times[name][n].append(now() - t0)
                        cpu[name][n].append(time.thread_time() - c0)
        ms = _medians_ms(times)
        out[preset] = {
            "params": count_params(model),
            "ms": ms,
            "vs_hf": _ratios(ms),
            "verify_cost_vs_one": {m: {n: ms[m][n] / ms[m][str(sizes[0])] for n in ms[m]} for m in ms},
        }
        if dev.type == "cpu":  # CPU time of this thread: what the forward costs, without other users' load
            out[preset]["cpu_ms"] = _medians_ms(cpu)
            out[preset]["cpu_vs_hf"] = _ratios(out[preset]["cpu_ms"])
        if compiled:
            out[preset]["compile_s"] = compile_s
            ref, _ = LeanLM(model, vocab, preset).forward(ids[: prefix + 4], keep=4)
            methods["compiled"].crop(prefix)
            got, _ = methods["compiled"].forward(ids[prefix : prefix + 4], keep=4)
            out[preset]["compiled_max_abs_diff"] = float((got - ref).abs().max())
    return out


def _medians_ms(times: dict[str, dict[int, list[float]]]) -> dict[str, dict[str, float]]:
    return {m: {str(n): 1e3 * statistics.median(v) for n, v in per.items()} for m, per in times.items()}


def _ratios(ms: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {m: {n: ms["hf"][n] / ms[m][n] for n in ms[m]} for m in ms if m != "hf"}


def format_table(results: dict) -> str:
    """One line per preset, method and clock: median ms per size and the ratio to HF."""
    lines = []
    for preset, r in results.items():
        for clock, key in (("wall", "ms"), ("cpu", "cpu_ms")):
            for method, per in r.get(key, {}).items():
                cells = "  ".join(f"{n:>2} tok {v:7.3f} ms" for n, v in per.items())
                ratios = r["vs_hf" if key == "ms" else "cpu_vs_hf"].get(method)
                ratio = "   vs hf " + " ".join(f"{x:.2f}x" for x in ratios.values()) if ratios else ""
                lines.append(f"{preset:18s} {r['params'] / 1e6:5.2f}M {clock:4s} {method:9s} {cells}{ratio}")
        if "compile_s" in r:
            lines.append(
                f"{preset:18s} compile s per size: "
                + ", ".join(f"{n}: {s:.1f}" for n, s in r["compile_s"].items())
                + f"; max |logit diff| vs lean {r['compiled_max_abs_diff']:.2e}"
            )
    return "\n".join(lines)

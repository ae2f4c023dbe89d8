"""Write the generated tables: the README's main results block and results/benchmarks/README.md in full.

    python experiments/readme.py            # from the checkout's root (or anywhere: it finds the checkout)

Reads results/*/results.json (written by `adaspec reproduce`, each with the command that made it) and
results/benchmarks/*.json (written by the scripts under benchmarks/, each with its command). Every number in
the output is read from those files; nothing is typed in by hand.

- README.md: only the text between `<!-- results:start -->` and `<!-- results:end -->` is replaced.
- results/benchmarks/README.md: rewritten whole (fixed header text, the benchmark tables, the vLLM tables).

This script is deliberately self-contained (plain json/pathlib): the table code is a copy of what
`adaspec/reproduce/report.py` (readme_table, variants_table, benchmark_tables, vllm_tables and helpers),
`report_heads.py`, `report_pretrained.py`, `evaluation/drafters.py`, `evaluation/trees.py`,
`evaluation/crossover.py` and `serving/vllm_benchmark.py` used to write into the README, so it keeps working
while the package is reorganised. α in every table is the empirical acceptance from real speculative
decoding over the tokens the target checked: accepted / (accepted + rejected), one rejection per step that
ended on one (the paper's α).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's adaspec, run as a script

# the tables the benchmarks print are the tables written here
from adaspec.evaluation.crossover import format_sweep  # noqa: E402
from adaspec.evaluation.drafters import format_rows as format_drafter_rows  # noqa: E402
from adaspec.evaluation.trees import format_rows as format_tree_rows  # noqa: E402
from adaspec.recipes.reproduce.report import OFFICIAL, fmt, gap_ce, mean_std, pm  # noqa: E402
from adaspec.recipes.reproduce.report_official import VARIANT_LABELS, VARIANT_MARGIN  # noqa: E402
from adaspec.serving.vllm_benchmark import format_vllm_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]  # the checkout: experiments/readme.py
COMMAND = "python experiments/readme.py"


# ---------------------------------------------------------------- small formatting helpers


def _dash(x: Any, spec: str = ".2f", unit: str = "") -> str:
    return "-" if x is None else format(x, spec) + unit


# ---------------------------------------------------------------- the main results block

# The paper's main table, 3-epoch column, Pythia-31M -> Pythia-1.4B, greedy α in % (DistillSpec, AdaSPEC), as
# published in the authors' repository README (github.com/yuezhouhu/adaspec, "Main Results"); quoted, not measured
PAPER_ALPHA: dict[str, tuple[float, float]] = {
    "gsm8k": (57.58, 61.02),
    "alpaca": (44.34, 47.25),
    "mbpp": (46.88, 47.73),
    "cnn_dailymail": (73.05, 74.22),
    "xsum": (47.24, 49.11),
}


# the heads table's columns, in the order `adaspec reproduce --heads` trains them
HEAD_COLUMNS = {
    "eagle": "EAGLE-3 KD",
    "eagle_adaspec": "EAGLE-3 AdaSPEC",
    "eagle1": "EAGLE-1 KD",
    "mtp": "MTP KD",
    "mtp_adaspec": "MTP AdaSPEC",
    "medusa": "Medusa KD",
}


def _paper(task: str) -> str:
    if task not in PAPER_ALPHA:
        return "n/a"
    d, a = PAPER_ALPHA[task]
    return f"{d:.1f} / {a:.1f}, {a - d:+.1f}"


def _controls(r: dict, names: tuple[str, ...] = ("distillspec_long", "adaspec_random"), first: bool = True) -> str:
    """First-seed α of the ablations that separate selection from training longer (AdaSPEC's first)."""
    abl = r.get("ablations") or {}
    if not set(names) <= set(abl):
        return "n/a"
    values = [abl[n]["alpha_greedy"] for n in names]
    if first:
        values.insert(0, r["alpha_greedy_seeds"]["adaspec"][0])
    return " / ".join(f"{100 * v:.1f}" for v in values)


def _official_row(r: dict) -> str:
    o = r[OFFICIAL]
    seeds = o["alpha_greedy_seeds"]
    d, a = seeds["distillspec"], seeds["adaspec"]
    steps = sorted(
        {
            o["optimizer_steps"][n]
            for n in ("distillspec", "adaspec", "kd_big_batch", "random_big_batch")
            if n in o["optimizer_steps"]
        }
    )
    return (
        f"| {r['task']} | {pm(d)} | {pm(a)} | {100 * (mean_std(a)[0] - mean_std(d)[0]):+.1f} | "
        f"{_paper(r['task'])} | {pm(seeds.get('kd_big_batch', []))} | {pm(seeds.get('random_big_batch', []))} | "
        f"{' / '.join(map(str, steps))} | {o['global_batch']['distillspec']} / {o['global_batch']['adaspec']} | "
        f"{len(o['seeds'])} | `{o['command']}` |"
    )


def heads_row(r: dict) -> str:
    """A task's row of the heads table."""
    seeds = r["alpha_greedy_seeds"]
    cells = [pm(seeds.get(n, [])) for n in ("distillspec", "adaspec", *HEAD_COLUMNS)]
    return f"| {r['task']} | {r['preset']} | {' | '.join(cells)} | {len(r['seeds'])} | `{r['command']}` |"


def heads_table(rows: list[str]) -> list[str]:
    return [
        "Drafter heads on the same frozen targets (`--heads`), greedy α (%), mean ± std over seeds "
        "(EAGLE-1: first seed), beside the DistillSpec and AdaSPEC drafts:",
        "",
        "| task | preset | DistillSpec | AdaSPEC | " + " | ".join(HEAD_COLUMNS.values()) + " | seeds | command |",
        "|---|---|---|---|" + "---|" * len(HEAD_COLUMNS) + "---|---|",
        *rows,
    ]


def variants_table(results_dir: Path) -> list[str]:
    """Per task, each acceptance-aligned variant's gain over plain KD at equal steps (results.json's
    `variants_vs_kd`); empty when no task has variants."""
    rows, wins = [], {n: 0 for n in VARIANT_LABELS}
    # a variants run kept apart (`--results-dir results/variants`) leaves the main official block as it was
    for path in sorted([*results_dir.glob("*/results.json"), *(results_dir / "variants").glob("*/results.json")]):
        verdicts = (json.loads(path.read_text()).get(OFFICIAL) or {}).get("variants_vs_kd")
        if not verdicts:
            continue
        cells = []
        for name in VARIANT_LABELS:
            v = verdicts.get(name)
            cells.append(
                "n/a"
                if v is None
                else f"{100 * v['gain']:+.1f} (± {100 * v['spread']:.1f})" + (" ✓" if v["beats"] else "")
            )
            wins[name] += bool(v and v["beats"])
        seeds = max(v["seeds"] for v in verdicts.values())
        rows.append(f"| {path.parent.name} | {seeds} | {' | '.join(cells)} |")
    if not rows:
        return []
    head = " | ".join(VARIANT_LABELS[n] for n in VARIANT_LABELS)
    return [
        "",
        "Acceptance-aligned variants under the authors' protocol: gain over plain KD at equal optimizer steps "
        "(the better of DistillSpec and KD at AdaSPEC's batch) in points of greedy α, mean over seeds (± the "
        f"sum of both seed standard deviations); ✓ = a gain of ≥ {100 * VARIANT_MARGIN:g} point beyond that "
        "spread:",
        "",
        f"| task | seeds | {head} |",
        "|---|---|" + "---|" * len(VARIANT_LABELS),
        *rows,
        "",
        "Tasks won: " + ", ".join(f"{n} {wins[n]} of {len(rows)}" for n in VARIANT_LABELS) + ".",
    ]


def _diff(seeds: dict, a: str, b: str) -> str:
    if not seeds.get(a) or not seeds.get(b):
        return "n/a"
    return f"{100 * (mean_std(seeds[a])[0] - mean_std(seeds[b])[0]):+.1f}"


def pretrained_row(block: dict, task: str, scratch: dict | None) -> str:
    seeds, ce = block["alpha_greedy_seeds"], block["validation_ce"]
    params, quality = block.get("params") or {}, block.get("target_quality") or {}
    sizes = f"{params['target'] / 1e6:.2f}M / {params['draft'] / 1e6:.2f}M" if params else "n/a"
    before = (
        f"{pm(scratch['alpha_greedy_seeds']['distillspec'])} / {pm(scratch['alpha_greedy_seeds']['adaspec'])}"
        if scratch
        else "n/a"
    )
    return (
        f"| {task} | {sizes} | {fmt(ce.get('target'), '.2f')} / {fmt(ce.get('draft_init'), '.2f')} / "
        f"{fmt(ce.get('distillspec'), '.2f')} | {quality.get('metric', 'n/a')} {fmt(quality.get('value'))} | "
        f"{pm(seeds.get('draft_init', []))} | {pm(seeds['distillspec'])} | {pm(seeds['adaspec'])} | "
        f"{_diff(seeds, 'adaspec', 'distillspec')} | {pm(seeds.get('kd_big_batch', []))} | "
        f"{pm(seeds.get('random_big_batch', []))} | {_diff(seeds, 'adaspec', 'kd_big_batch')} | {before} | "
        f"{len(block['seeds'])} | `{block['command']}` |"
    )


def pretrained_table(results_dir: Path) -> list[str]:
    """The rows of results/pretrained/<task>; empty when none is committed."""
    rows = []
    for path in sorted((results_dir / "pretrained").glob("*/results.json")):
        block = json.loads(path.read_text()).get(OFFICIAL)
        if not block:
            continue
        main = results_dir / path.parent.name / "results.json"
        scratch = json.loads(main.read_text()).get(OFFICIAL) if main.exists() else None
        rows.append(pretrained_row(block, path.parent.name, scratch))
    if not rows:
        return []
    return [
        "",
        "Nearer the paper's regime (`--preset pretrained`): target and draft first pretrained on the corpus "
        "of every task's training text, the draft to its plateau, then the target fine-tuned 3 epochs on the "
        "task and the draft distilled from its pretrained weights; the authors' protocol at equal optimizer "
        "steps. Greedy α in %, mean ± std over seeds; response cross-entropy on the validation split:",
        "",
        "| task | target / draft params | CE target / initial draft / DistillSpec | target quality | "
        "initial draft α | DistillSpec α | AdaSPEC α | AdaSPEC − DistillSpec | KD at AdaSPEC's batch α | "
        "random 40% at AdaSPEC's batch α | AdaSPEC − KD at its batch | same protocol from the barely trained "
        "draft: DistillSpec / AdaSPEC α | seeds | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def readme_table(results_dir: Path) -> str:
    """The README's results block: one row per task with committed results, beside the paper's numbers, then
    the heads, the authors' protocol, the variants and the pretrained regime."""
    rows = [
        "| task | preset | target / draft params | response CE target / DistillSpec (split) | target quality | "
        "DistillSpec α (%) | AdaSPEC α (%) | Δ (points) | paper: DistillSpec / AdaSPEC α (%), Δ | "
        "first seed: AdaSPEC / KD at equal steps / random 40% α (%) | first seed, 4× those steps: KD / AdaSPEC α (%) | "
        "seeds | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    official, heads = [], []
    for path in sorted(results_dir.glob("*/results.json")):
        r = json.loads(path.read_text())
        if r.get(OFFICIAL):
            official.append(_official_row(r))
        if "alpha_greedy_seeds" not in r:
            continue
        if r.get("heads"):
            heads.append(heads_row(r))
        d, a = r["alpha_greedy_seeds"]["distillspec"], r["alpha_greedy_seeds"]["adaspec"]
        delta = 100 * (mean_std(a)[0] - mean_std(d)[0])
        q = r["target_quality"]
        split, ce = gap_ce(r)
        rows.append(
            f"| {r['task']} | {r['preset']} | {r['params']['target'] / 1e6:.2f}M / "
            f"{r['params']['draft'] / 1e6:.2f}M | {ce['target']:.2f} / {ce['distillspec']:.2f} ({split}) | "
            f"{q['metric']} {fmt(q['value'])} | {pm(d)} | {pm(a)} | {delta:+.1f} | {_paper(r['task'])} | "
            f"{_controls(r)} | {_controls(r, ('distillspec_long4', 'adaspec_long4'), first=False)} | "
            f"{len(r['seeds'])} | `{r['command']}` |"
        )
    # a heads run kept apart from the main table (`--results-dir results/heads`)
    for path in sorted((results_dir / "heads").glob("*/results.json")):
        heads.append(heads_row(json.loads(path.read_text())))
    if heads:
        rows += ["", *heads_table(heads)]
    if official:
        rows += [
            "",
            "Under the authors' protocol (equal optimizer steps: AdaSPEC at 2.5× DistillSpec's batch for "
            "2.5× its epochs; constant lr 3e-4, weight decay 0.1; same target and initial draft):",
            "",
            "| task | DistillSpec α (%) | AdaSPEC α (%) | Δ (points) | paper: DistillSpec / AdaSPEC α (%), Δ | "
            "KD at AdaSPEC's batch α (%) | random 40% at AdaSPEC's batch α (%) | optimizer steps, each | "
            "global batch KD / AdaSPEC | seeds | command |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *official,
        ]
    rows += variants_table(results_dir)
    rows += pretrained_table(results_dir)
    return "\n".join(rows)


# ---------------------------------------------------------------- the benchmark tables


def benchmark_tables(bench_dir: Path) -> str:
    """The benchmark tables, from results/benchmarks/*.json (image links relative to bench_dir)."""
    out = []
    path = bench_dir / "distill_throughput.json"
    if path.exists():
        b = json.loads(path.read_text())
        v, a = b["variants"], b["alpha"]
        out += [
            f"Distillation throughput (`{b['command']}`; {b['settings']['limit']} GSM8K examples, "
            f"{v['cached']['steps']} steps, AdaSPEC k={b['settings']['k']}, top-{b['settings']['top_k']} cache, "
            "1 thread, tokens per CPU-second):",
            "",
            "| variant | tokens/s | peak RSS (MiB) | greedy α on target continuations | "
            "greedy α on dataset responses | sampling α on dataset responses |",
            "|---|---|---|---|---|---|",
        ]
        for name, label in (("onthefly", "(a) target + reference forward every step"), ("cached", "(b) teacher cache")):
            out.append(
                f"| {label} | {v[name]['tokens_per_cpu_s']:,.0f} | {v[name]['peak_rss_mib']:.0f} | "
                f"{100 * a[name]['alpha_greedy']:.2f} | {100 * a[name]['alpha_greedy_reference_text']:.2f} | "
                f"{100 * a[name]['alpha_sampling_reference_text']:.2f} |"
            )
        amort = b["throughput_ratio_cpu_with_build_amortised_over_epochs"]
        out += [
            "",
            f"Throughput ratio (b)/(a): {b['throughput_ratio_cpu']:.2f}×; with the cache build "
            f"({b['cache']['build_seconds']:.1f} s, {b['cache']['size_mib']:.1f} MiB) amortised over 1 / 3 / 10 "
            f"epochs: {amort['1']:.2f} / {amort['3']:.2f} / {amort['10']:.2f}×. A cached step costs "
            f"{b['cached_cost_vs_draft_alone_cpu']:.2f}× a plain cross-entropy step of the draft alone.",
            "",
        ]
    path = bench_dir / "loss_memory.json"
    if path.exists():
        b = json.loads(path.read_text())
        out += [
            f"Loss memory (`{b['command']}`; {b['kind']} forward + backward, {b['input_dtype']} logits of "
            f"{' × '.join(map(str, b['shape']))}, CPU):",
            "",
            "| variant | peak growth (MiB) | median s |",
            "|---|---|---|",
        ]
        out += [f"| {r['variant']} | {r['peak_growth_mib']:.0f} | {r['median_s']:.2f} |" for r in b["results"]]
    for path in sorted(bench_dir.glob("drafters_*.json")):
        b = json.loads(path.read_text())
        out += [
            "",
            f"Every drafter, pair `{b['pair']}` (target {b['target_params'] / 1e6:.2f}M parameters, decode "
            f"path {b['decode_path']}, γ = {b['gamma']}, {b['n_prompts']} prompts × {b['max_new_tokens']} tokens, "
            f"{b['repeats']} repeats, {b['threads']} thread(s); verifying γ+1 tokens costs "
            f"{b['verify_cost_ratio']:.2f}× one target forward): `{b['command']}`",
            "",
            format_drafter_rows(b),
        ]
        if path.with_suffix(".png").exists():
            out += ["", f"![drafters {b['pair']}]({path.with_suffix('.png').name})"]
    for path in sorted(bench_dir.glob("tree_*.json")):
        b = json.loads(path.read_text())
        out += [
            "",
            f"Token trees against chains, every drafter, pair `{b['pair']}` (target {b['target_params'] / 1e6:.2f}M "
            f"parameters, decode path {b['decode_path']}, greedy, {b['n_prompts']} {b['task']} prompts × "
            f"{b['max_new_tokens']} tokens, {b['repeats']} repeats, {b['threads']} thread(s)): `{b['command']}`",
            "",
            format_tree_rows(b),
        ]
    out += dflash_tables(bench_dir)
    out += side_by_side_table(bench_dir)
    path = bench_dir / "crossover.json"
    if path.exists():
        b = json.loads(path.read_text())
        out += [
            "",
            f"Predicted speed-up against target size (`{b['command']}`; lean forward costs measured, "
            f"{b['threads']} thread(s); τ and the per-step work from the first trained pair; a prediction, "
            "not a trained pair per size):",
            "",
            format_sweep(b["sweep"]),
            "",
        ]
        out += [
            f"Calibration, pair `{c['pair']}` ({c['method']}): forwards-only formula {c['formula_speedup']:.2f}×, "
            f"measured {c['measured_speedup']:.2f}× (measured / formula {c['measured_over_formula']:.2f})."
            for c in b["calibration"]
        ]
    return "\n".join(out)


def dflash_tables(bench_dir: Path) -> list[str]:
    """benchmarks/dflash.py: KD against AdaSPEC DFlash heads over seeds, then its step profile where one exists."""
    out: list[str] = []
    for path in sorted(bench_dir.glob("dflash_*.json")):
        b = json.loads(path.read_text())
        s = b["settings"]
        out += [
            "",
            f"DFlash heads, pair `{b['pair']}` (block {s['block_size']}, {s['steps']} steps each, KD and AdaSPEC "
            f"against it at equal optimizer steps, {len(b['measurements'])} seeds, mean ± sd; {s['n_prompts']} "
            f"prompts × {s['max_new_tokens']} tokens, {s['repeats']} repeats; load average at start "
            f"{b['load_average_at_start'][0]:.1f}): `{b['command']}`",
            "",
            "| T | head | vs target | α | τ | c | acceptance by block slot |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in b["summary"]:
            out.append(
                f"| {r['temperature']:g} | {r['method'].removeprefix('sd_')} | {r['vs_target']:.2f} ± "
                f"{r['vs_target_sd']:.2f} | {r['alpha']:.3f} ± {r['alpha_sd']:.3f} | {r['tau']:.2f} ± "
                f"{r['tau_sd']:.2f} | {r['c']:.3f} | {' '.join(f'{x:.2f}' for x in r['position_acceptance'])} |"
            )
        first = next(iter(b["measurements"].values()))
        others = [r for r in first["rows"] if r["alpha"] is not None and "dflash" not in r["method"]]
        if others:
            out += [
                "",
                "Beside the pair's other drafters, first seed, same run:",
                "",
                "| T | drafter | vs target | α | τ | c |",
                "|---|---|---|---|---|---|",
            ]
            out += [
                f"| {r['temperature']:g} | {r['method'].removeprefix('sd_')} | {r['vs_target']:.2f} | "
                f"{r['alpha']:.3f} | {r['tau']:.2f} | {r['c']:.3f} |"
                for r in first["rows"]
                if r["alpha"] is not None
            ]
        if path.with_suffix(".png").exists():
            out += ["", f"![dflash {b['pair']}]({path.with_suffix('.png').name})"]
    for path in sorted(bench_dir.glob("step_profile_*dflash*.json")):
        b = json.loads(path.read_text())
        out += [
            "",
            f"Where a step's time goes (`{b['command']}`; γ = {b['gamma']}, greedy, ms per step, medians; load "
            f"average {b['load_average_1m_before_after'][0]:.1f} → {b['load_average_1m_before_after'][1]:.1f}):",
            "",
            "| drafter | draft | verify forward | accept | other | step | τ | vs target |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in b["methods"].items():
            if "step_ms" in r:  # the target alone has no step
                out.append(
                    f"| {name} | {r['draft_ms']:.2f} | {r['verify_forward_ms']:.2f} | {r['accept_ms']:.2f} | "
                    f"{r['other_ms']:.2f} | {r['step_ms']:.2f} | {r['tau']:.2f} | {r['vs_target']:.2f} |"
                )
    return out


def side_by_side_table(bench_dir: Path) -> list[str]:
    """benchmarks/side_by_side.py: two checkouts' drafters on the same prompts, alternated in one run."""
    path = bench_dir / "side_by_side_demo.json"
    if not path.exists():
        return []
    b = json.loads(path.read_text())
    out = [
        "",
        f"Before and after a change, side by side (`{b['command']}`; before = `{b['before']}`, after = the working "
        f"tree; {b['repeats']} alternated repeats, medians; load average {b['load_average_before_after'][0][0]:.1f}"
        f" → {b['load_average_before_after'][1][0]:.1f}):",
        "",
        "| benchmark | method | vs target before | vs target after | after / before | α and τ |",
        "|---|---|---|---|---|---|",
    ]
    for kind, rows in b["rows"].items():
        out += [
            f"| {kind} | {r['method']} | {r['before_vs_target']:.3f} | {r['after_vs_target']:.3f} | "
            f"{r['after_over_before_vs_target']:.3f} | {'same' if r['same_alpha_and_tau'] else 'differ'} |"
            for r in rows
        ]
    return out


def vllm_tables(bench_dir: Path) -> str:
    """The vLLM tables, from results/benchmarks/vllm_*.json."""
    out = []
    for path in sorted(bench_dir.glob("vllm_*.json")):
        b = json.loads(path.read_text())
        load = b["load_average_1m_before_after"]
        out += [
            f"Pair `{b['pair']}`, vLLM {b['vllm_version']} (CPU), γ = {b['gamma']}, {b['n_prompts']} "
            f"{b['prompts']} prompts × {b['max_new_tokens']} tokens, median of {b.get('repeats', 1)} timed "
            f"passes, load average {load[0]:.1f} → {load[1]:.1f}: `{b['command']}`",
            "",
            format_vllm_rows(b),
            "",
        ]
    return "\n".join(out)


# ---------------------------------------------------------------- the two files

BENCH_HEADER = f"""# Benchmarks

Generated by `{COMMAND}` from the JSON files in this folder; do not edit by hand (a rerun overwrites it).

Scripts under `benchmarks/` print their tables and save JSON here, each file with the exact command that
produced it (repeated beside its table below). The machine is a shared 2-core CPU: ratios are measured side
by side in one run, absolute figures drift with load.
Conventions (α, τ, c, "vs target") are the README's. What these tables say, read with their caveats, is in
[docs/findings.md](../../docs/findings.md); serving and vLLM's counters in [docs/serving.md](../../docs/serving.md).

Decoding speed (`benchmarks/decode.py`: the target alone, adaspec SD with fixed and
adaptive γ, HF assisted generation, on the same prompts) is run by `adaspec reproduce` on each trained pair;
its figures are in `results/<task>/report.md` (those committed before the lean decode path ran on the
transformers path). Other JSON here (`step_profile_demo.json`,
`forward_cost.json`, ...) is read in the docs that cite it.
"""

VLLM_HEADER = """## vLLM

The same drafters through vLLM (`make vllm` first), vLLM's own counters beside adaspec's α and τ on vLLM's
schedule ([docs/serving.md](../../docs/serving.md) explains the columns):
"""


def _write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_block(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"README has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def benchmarks_readme(bench_dir: Path) -> str:
    parts = [BENCH_HEADER, benchmark_tables(bench_dir)]
    vllm = vllm_tables(bench_dir)
    if vllm:
        parts += ["", VLLM_HEADER, vllm]
    return "\n".join(parts).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=ROOT, help="the checkout (default: this script's)")
    p.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 when either file differs from what would be written"
    )
    args = p.parse_args(argv)
    readme, results = args.root / "README.md", args.root / "results"
    bench = results / "benchmarks"
    new_readme = replace_block(readme.read_text(encoding="utf-8"), "results", readme_table(results))
    new_bench = benchmarks_readme(bench)
    outputs = {readme: new_readme, bench / "README.md": new_bench}
    if args.check:
        stale = [str(p) for p, text in outputs.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
        for s in stale:
            print(f"out of date: {s} (run `{COMMAND}`)", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        _write_text(path, text)
        print(f"wrote {path.relative_to(args.root) if path.is_relative_to(args.root) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stages 5-6 of `adaspec build`: the rows of every drafter, the winner exported, the report written.

results.json rows follow results/own_data/<dataset>.json: {"drafter": family, "method": "kd"|"adaspec",
"init": "pretrained"|"fresh", "steps", "alpha", "tau", "speedup", "engine": "adaspec"|"vllm", ...}; α is
adaspec's α = accepted / (accepted + rejected), τ tokens per target forward, bonus included.
"""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaspec.drafters import FAMILIES
from adaspec.drafters.family import Served
from adaspec.io import atomic_write_json
from adaspec.options import command_line
from adaspec.recipes.build import measure, plan

if TYPE_CHECKING:
    from adaspec.recipes.build.command import Build


def _summary(path: Path) -> dict[str, Any]:
    return json.loads((path / "train_summary.json").read_text())


def assemble(
    build: Build,
    split: dict[str, Any],
    runs: dict[str, Path],
    sweep: dict[int, dict[str, Any]],
    served: dict[str, dict[str, Any]],
    left_out: dict[str, str],
) -> dict[str, Any]:
    rows = []
    for name, path in runs.items():
        family, method = measure.family_of(name), name.rsplit("_", 1)[1]
        summary = _summary(path)
        gamma = measure.best_gamma(sweep, name)
        ours = sweep[gamma]["drafts"][name]
        common = {
            "name": name,
            "drafter": family,
            "method": method,
            "init": "pretrained" if FAMILIES[family].is_draft_model and build.opts.draft_init else "fresh",
            "steps": summary.get("steps"),
            "cold_start": summary.get("cold_start"),
            "truncated": summary.get("truncated"),
            "path": str(path),
        }
        rows.append(
            {
                **common,
                "engine": "adaspec",
                "gamma": gamma,
                "alpha": ours["alpha"],
                "alpha_drafted": ours["alpha_drafted"],
                "tau": ours["tau"],
                "position_acceptance": ours["position_acceptance"],
                "speedup": ours["measured_speedup"],
                "eval_command": measure.eval_command(build, name, path, gamma),
            }
        )
        row = served.get(name)
        if row is not None:
            rows.append(
                {
                    **common,
                    "engine": "vllm",
                    "gamma": row["gamma"],
                    "alpha": row["alpha"],
                    "alpha_drafted": row["alpha_drafted"],
                    "tau": row["mean_acceptance_length"],
                    "position_acceptance": row["position_acceptance"],
                    "speedup": row["vs_target"],
                    "loaded": row["loaded"],
                    "reason": row.get("reason"),
                    # adaspec's α on vLLM's schedule (adaspec.serving.vllm_engine): what vLLM's must equal
                    "alpha_same_schedule": (row.get("adaspec") or {}).get("alpha"),
                }
            )
    best = plan.best_row(rows)
    return {
        "dataset": Path(build.opts.data).stem,
        "target": build.opts.target,
        "command": command_line("build", build.opts),
        "data": split,
        "gammas": build.opts.gammas,
        "speed_by_gamma": {n: {g: sweep[g]["drafts"][n]["measured_speedup"] for g in sweep} for n in runs},
        "target_alone": {g: sweep[g]["target"] for g in sweep},
        "left_out": left_out,
        "rows": rows,
        "best": best,
    }


# ---- the winner in the layouts the servers load (its family's exports), and the lines that serve it ----

# what the report calls each server
SERVER_NAMES = {"vllm": "vLLM", "sglang": "SGLang"}


def _vllm(build: Build, served: Served, gamma: int) -> str:
    spec = {"method": served.method, "model": served.model, "num_speculative_tokens": gamma}
    return shlex.join(["vllm", "serve", build.opts.target, "--speculative-config", json.dumps(spec)])


def _sglang(build: Build, served: Served, gamma: int) -> str:
    return shlex.join(
        [
            "python",
            "-m",
            "sglang.launch_server",
            "--model-path",
            build.opts.target,
            "--speculative-algorithm",
            served.method,
            "--speculative-draft-model-path",
            served.model,
            "--speculative-num-steps",
            str(gamma),
            "--speculative-eagle-topk",
            "1",
            "--speculative-num-draft-tokens",
            str(gamma + 1),
        ]
    )


SERVE_LINES: dict[str, Callable[[Build, Served, int], str]] = {"vllm": _vllm, "sglang": _sglang}


def export_winner(build: Build, result: dict[str, Any]) -> None:
    """The best drafter written for every server its family has a layout for, under export/<server>, and the
    command serving each (None where the server has no layout of it)."""
    from adaspec.models import load_model

    best = result["best"]
    family = FAMILIES[best["drafter"]]
    shutil.rmtree(build.out / "export", ignore_errors=True)  # an earlier winner's files never linger
    target = load_model(build.opts.target, trust_remote_code=build.opts.trust_remote_code)
    serve: dict[str, str | None] = dict.fromkeys(SERVE_LINES)
    for server in family.exports:
        exported = family.serve(server, best["path"], target, build.out / "export" / server)
        serve[server] = SERVE_LINES[server](build, exported, best["gamma"])
    result["serve"] = serve


# ---- report ----


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in result["rows"]:
        positions = " ".join(f"{p:.2f}" for p in r["position_acceptance"] or [])
        rows.append(
            [
                r["drafter"],
                r["method"],
                r["init"],
                str(r["steps"]),
                str(r["gamma"]),
                _fmt(r["alpha"]),
                _fmt(r["tau"], ".2f"),
                positions or "–",
                _fmt(r["speedup"], ".2f") + ("x" if r["speedup"] else ""),
                r["engine"] + ("" if r.get("loaded", True) else f" (not loaded: {r.get('reason')})"),
            ]
        )
    return rows


HEADER = ["drafter", "method", "init", "steps", "γ", "α", "τ", "per-position acceptance", "speed vs target", "engine"]


def summary_table(result: dict[str, Any]) -> str:
    rows = [HEADER, *table_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    best = result["best"]
    return "\n".join(
        [
            *lines,
            f"best: {best['drafter']} {best['method']} at γ = {best['gamma']}, "
            f"{best['speedup']:.2f}x the target alone ({best['engine']})",
        ]
    )


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, by_gamma in result["speed_by_gamma"].items():
        gammas = sorted(by_gamma)
        ax.plot(gammas, [by_gamma[g] for g in gammas], marker="o", label=name)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("γ (tokens drafted per step)")
    ax.set_ylabel("speed vs the target alone (adaspec engine)")
    ax.set_xticks(result["gammas"])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _truncation_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for r in result["rows"]:
        if r["engine"] == "adaspec" and r.get("truncated"):
            lines.append(f"- {r['name']}: {json.dumps(r['truncated'])}")
    return lines


def write(build: Build, result: dict[str, Any]) -> None:
    best, split, serve = result["best"], result["data"], result["serve"]
    plot(result, build.out / "speed_vs_gamma.png")
    lines = [
        f"# adaspec build: {result['dataset']} on {result['target']}",
        "",
        f"Made by `{result['command']}`.",
        "",
        f"Data: {split['train']} training, {split['validation']} validation and {split['test']} held-out test "
        f"records ({split['chat']} chats) from `{split['source']}`. Measured on the held-out test prompts, "
        f"greedy, each drafter at its fastest γ of {', '.join(map(str, result['gammas']))}; speed is the "
        "median over prompts of the time per token against the target alone, in the engine named.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
        *("| " + " | ".join(r) + " |" for r in table_rows(result)),
        "",
        "![speed against γ per drafter](speed_vs_gamma.png)",
        "",
    ]
    if result["left_out"]:
        lines += ["Not trained: " + "; ".join(f"{f} ({why})" for f, why in result["left_out"].items()) + ".", ""]
    truncated = _truncation_lines(result)
    lines += (
        ["Conversations cut to fit --max-length, per training run:", *truncated, ""]
        if truncated
        else ["No training record was cut to fit --max-length.", ""]
    )
    lines += [
        f"## Best: {best['drafter']} ({best['method']}) at γ = {best['gamma']}",
        "",
        f"{best['speedup']:.2f}x the target alone in {best['engine']}'s engine, α {best['alpha']:.3f}, "
        f"τ {best['tau']:.2f}. Exported to `{build.out / 'export'}`.",
        "",
    ]
    if best["speedup"] < 1:
        lines += [
            "No drafter decodes faster than the target alone here: serving the target without speculative "
            "decoding is faster until a drafter trained longer (or a larger target) changes that.",
            "",
        ]
    lines += ["## Serve it", ""]
    for server, name in SERVER_NAMES.items():
        line = serve.get(server)
        lines += (
            [f"{name}:", "", "```", line, "```", ""]
            if line
            else [f"{name}: {FAMILIES[best['drafter']].why_not_served(server)}.", ""]
        )
    (build.out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    atomic_write_json(build.out / "results.json", result)

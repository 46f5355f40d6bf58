"""Headroom of a testbed task: the SFT policy's holdout gold greedy, at T=1, and best-of-n at T=1 (issue 13, item 1).

Headroom that needs learning means best-of-n (picked by gold: the oracle ceiling of what exploration finds) is well
above the *greedy* answer, not only above a T=1 sample: otherwise "gold rises" only means "entropy falls".
Goal on ``sort_hard``: greedy <= 0.75 and best-of-16 >= greedy + 0.15.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/testbed_headroom.py --tasks sort_hard sort_digits --seeds 0 1 2

Each seed builds (or reuses from the cache) the task's SFT policy with that seed (the corpus, prompts and model init
all change) and measures it on the article's 256 holdout prompts. Per seed: mean and 95% CI over prompts; across
seeds: mean and 95% t-interval over the seed means. Writes ``benchmarks/results/testbed_headroom.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MEASURES = ("greedy", "T=1", "best-of-4", "best-of-16")


def measure(task: str, seed: int, num_prompts: int, n: int = 16, max_new_tokens: int = 24) -> dict:
    """Gold of the task's SFT policy (seed ``seed``) on holdout prompts: greedy, one T=1 sample, best-of-4/16."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_extras.core.stats import mean_ci
    from trl_extras.modeling.generation import generate_rollouts
    from trl_extras.testbed import task_module

    tb = task_module(task)
    start = time.perf_counter()
    path = tb.sft_policy(seed=seed, progress=False)
    build_s = time.perf_counter() - start
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = list(tb.prompt_dataset("holdout", tb.TaskConfig(seed=seed))["prompt"])[:num_prompts]
    torch.manual_seed(seed)
    greedy = generate_rollouts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0, batch_size=256)
    g_greedy = torch.tensor(tb.gold_reward_fn(greedy.prompts, greedy.completions))
    sampled = generate_rollouts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=1.0,
                                num_generations=n, batch_size=256)
    g = torch.tensor(tb.gold_reward_fn(sampled.prompts, sampled.completions)).view(len(prompts), n)
    per_prompt = {
        "greedy": g_greedy,
        "T=1": g.mean(1),  # the expected gold of one sample (lower variance than one draw)
        "best-of-4": g[:, :4].max(1).values,
        "best-of-16": g.max(1).values,
    }
    out = {"task": task, "seed": seed, "num_prompts": len(prompts), "sft_build_or_load_s": round(build_s, 1),
           "exact_greedy": float((g_greedy == 1).float().mean()), "exact_T1": float((g == 1).float().mean())}
    for name, values in per_prompt.items():
        mean, low, high = mean_ci(values.tolist())
        out[name] = {"mean": mean, "ci": [low, high]}
    out["bo16_minus_greedy"] = out["best-of-16"]["mean"] - out["greedy"]["mean"]
    return out


def across_seeds(rows: list[dict], key, single_ci=None) -> dict:
    """Mean and 95% t-interval over seeds; with one seed, that seed's interval over prompts (``single_ci``)."""
    from trl_extras.core.stats import mean_ci

    values = [key(r) for r in rows]
    if len(values) < 2:
        return {"mean": values[0], "ci": single_ci(rows[0]) if single_ci else None, "values": values}
    mean, low, high = mean_ci(values)
    return {"mean": mean, "ci": [low, high], "values": values}


def summarize(rows: list[dict]) -> dict:
    out = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        summary = {m: across_seeds(mine, lambda r, m=m: r[m]["mean"], lambda r, m=m: r[m]["ci"]) for m in MEASURES}
        summary["bo16_minus_greedy"] = across_seeds(mine, lambda r: r["bo16_minus_greedy"])
        summary["goal_greedy_le_0.75"] = all(r["greedy"]["mean"] <= 0.75 for r in mine)
        summary["goal_bo16_ge_greedy_plus_0.15"] = all(r["bo16_minus_greedy"] >= 0.15 for r in mine)
        out[task] = summary
    return out


def _ci(x) -> str:
    return f"[{x[0]:.3f}, {x[1]:.3f}]" if x else "–"


def markdown(rows: list[dict], summary: dict, command: str) -> str:
    md = [
        "# Testbed headroom: the SFT policy's holdout gold, greedy vs sampled vs best-of-n (issue 13, item 1)",
        "",
        f"`{command}`",
        "",
        "Best-of-n is picked by gold (the oracle ceiling of what exploration can find) from n samples at T=1; *T=1* is "
        "the mean gold of the 16 samples per prompt. Per seed: mean [95% CI over prompts]; the task's SFT policy, "
        "prompts and corpus all change with the seed.",
        "",
        "| task | seed | greedy | T=1 | best-of-4 | best-of-16 | bo16 − greedy | exact (greedy / T=1) | build s |",
        "|---|---:|---|---|---|---|---:|---|---:|",
    ]
    for r in rows:
        cells = " | ".join(f"{r[m]['mean']:.3f} {_ci(r[m]['ci'])}" for m in MEASURES)
        md.append(f"| {r['task']} | {r['seed']} | {cells} | {r['bo16_minus_greedy']:+.3f} | "
                  f"{r['exact_greedy']:.2f} / {r['exact_T1']:.2f} | {r['sft_build_or_load_s']} |")
    md += ["", "Across seeds (mean [95% t-interval over seed means; with one seed, its interval over prompts]):", "",
           summary_table(summary),
           "![headroom](testbed_headroom.png)", ""]
    return "\n".join(md)


def summary_table(summary: dict) -> str:
    """The across-seeds table alone (README embeds it: ``<stem>_table.md``)."""
    md = ["| task | seeds | greedy | T=1 | best-of-4 | best-of-16 | bo16 − greedy | greedy <= 0.75 | bo16 >= greedy + 0.15 |",
          "|---|---:|---|---|---|---|---|---|---|"]
    for task, s in summary.items():
        n = len(s["greedy"]["values"])
        cells = " | ".join(f"{s[m]['mean']:.3f} {_ci(s[m]['ci'])}" for m in (*MEASURES, "bo16_minus_greedy"))
        md.append(f"| {task} | {n} | {cells} | {'held' if s['goal_greedy_le_0.75'] else 'NOT held'} | "
                  f"{'held' if s['goal_bo16_ge_greedy_plus_0.15'] else 'NOT held'} |")
    return "\n".join(md) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    width = 0.8 / max(1, len(summary))
    for i, (task, s) in enumerate(summary.items()):
        xs = [j + i * width for j in range(len(MEASURES))]
        means = [s[m]["mean"] for m in MEASURES]
        errs = [[m_ - s[m]["ci"][0] for m, m_ in zip(MEASURES, means)], [s[m]["ci"][1] - m_ for m, m_ in zip(MEASURES, means)]] \
            if all(s[m]["ci"] for m in MEASURES) else None
        ax.bar(xs, means, width=width, yerr=errs, capsize=3, label=task)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(MEASURES))], MEASURES)
    ax.set_ylabel("holdout gold")
    ax.set_ylim(0.4, 1.0)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    ax.set_title("SFT policy: greedy vs sampled vs best-of-n (oracle)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    import sys

    from trl_extras.utils.offline import use_offline_env

    use_offline_env()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=["sort_hard", "sort_digits"])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--num_prompts", type=int, default=256)
    parser.add_argument("--output", default=str(RESULTS / "testbed_headroom"), help="Path stem of .json/.md/.png.")
    parser.add_argument("--merge", nargs="*", default=[],
                        help="Earlier output .json files whose rows join this run's (seeds measured by other runs).")
    args = parser.parse_args(argv)
    rows, commands = [], []
    for path in args.merge:
        earlier = json.loads(Path(path).read_text())
        rows += earlier["rows"]
        commands.append(earlier["command"])
    for task in args.tasks:
        for seed in args.seeds:
            start = time.perf_counter()
            rows.append(measure(task, seed, args.num_prompts))
            rows[-1]["seconds"] = round(time.perf_counter() - start, 1)
            print(json.dumps(rows[-1]), flush=True)
    summary = summarize(rows)
    stem = Path(args.output)
    stem.parent.mkdir(parents=True, exist_ok=True)
    command = " + ".join([*commands, "python benchmarks/testbed_headroom.py " + " ".join(sys.argv[1:] if argv is None else argv)])
    stem.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows, "summary": summary}, indent=2))
    stem.with_suffix(".md").write_text(markdown(rows, summary, command))
    stem.with_name(stem.name + "_table.md").write_text(summary_table(summary))
    plot(summary, stem.with_suffix(".png"))
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

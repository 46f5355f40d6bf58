"""Method ranking on gold: `trl-extras demo`'s final table, per seed, and the demo goal across seeds (issue 13, 6-7).

    python benchmarks/method_ranking.py --seeds 1 2 [pipeline flags ...]

Runs (or resumes) the pipeline with exactly the demo's settings (``trl_extras.scripts.demo.DEMO_ARGS``) once per
seed, in ``outputs/method_ranking/seed<k>``, and writes

* ``benchmarks/results/demo_table_seed<k>.md``: the table file the demo wrote (``report/table.md``), verbatim, plus the
  run's wall time — README embeds these (``python -m trl_extras.utils.readme_tables`` checks they match);
* ``benchmarks/results/method_ranking_summary.md``: per method, gold at the sampling temperature and greedy, and the
  greedy side-by-side p-value against SFT, for every seed; whether the demo goal held (some optimizer beats SFT
  on gold at greedy decoding with p < 0.01, on each seed);
* ``benchmarks/results/method_ranking.json`` (every table, settings, times) and the reward-vs-KL plot of the first seed.

AlpacaFarm (Dubois et al. 2023) found PPO > best-of-n > expert iteration > SFT with a simulated judge; we report what
the testbed shows, whatever it is.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
OPTIMIZERS = ("cem", "ppo_single", "ppo", "ppo_refresh", "dpo")


def run_seed(seed: int, argv: list[str], root: str, results_dir: Path = RESULTS) -> dict:
    from trl_extras.pipeline.config import PipelineConfig
    from trl_extras.pipeline.report import TABLE_FILE, write_report
    from trl_extras.pipeline.stages import run_pipeline
    from trl_extras.scripts.demo import DEMO_ARGS
    from trl_extras.scripts.utils import parse_args

    args = [*DEMO_ARGS, "--output_dir", f"{root}/seed{seed}", "--seed", str(seed), *argv]
    (config,) = parse_args([PipelineConfig], args, "method_ranking")
    start = time.perf_counter()
    ctx = run_pipeline(config)
    seconds = time.perf_counter() - start
    report_dir = Path(config.output_dir) / "report"
    write_report(ctx.results, report_dir, title=f"Method ranking on the {config.task} testbed (seed {seed})")
    stage_seconds = {k: v.get("seconds") for k, v in ctx.results.items() if isinstance(v, dict) and "seconds" in v}
    table_md = (report_dir / TABLE_FILE).read_text()
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"demo_table_seed{seed}.md").write_text(
        f"`trl-extras demo --seed {seed}` ({config.task}): all stages {sum(stage_seconds.values()):.0f} s "
        f"(this invocation {seconds:.0f} s: finished stages are reused; stage times in `method_ranking.json`).\n\n{table_md}\n"
    )
    if (report_dir / "reward_vs_kl.png").exists():
        shutil.copy(report_dir / "reward_vs_kl.png", results_dir / f"method_ranking_reward_vs_kl_seed{seed}.png")
    return {"seed": seed, "config": dict(vars(config)), "table": ctx.results["evaluate"]["table"],
            "evaluate": {k: v for k, v in ctx.results["evaluate"].items() if k != "settings"},
            "stage_seconds": stage_seconds, "stages_total_seconds": round(sum(stage_seconds.values()), 1),
            "this_run_seconds": round(seconds, 1)}


def summary_markdown(runs: list[dict], alpha: float = 0.01) -> tuple[str, dict]:
    """Per method and seed: gold (T) / greedy gold / greedy p vs SFT; the goal per seed."""
    seeds = [r["seed"] for r in runs]
    methods = list(dict.fromkeys((row["stage"], row["method"]) for r in runs for row in r["table"]))
    md = [
        "| method | " + " | ".join(f"seed {s}: gold (T) / greedy / p greedy" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    goal = {}
    for r in runs:
        sft = next(row for row in r["table"] if row["stage"] == "sft")
        winners = [row["method"] for row in r["table"] if row["stage"] in OPTIMIZERS
                   and row.get("p_value_greedy") is not None and row["p_value_greedy"] < alpha
                   and row["gold_greedy"] > sft["gold_greedy"]]
        goal[r["seed"]] = winners
    for stage, method in methods:
        cells = []
        for r in runs:
            row = next((x for x in r["table"] if x["stage"] == stage), None)
            if row is None:
                cells.append("–")
                continue
            p = row.get("p_value_greedy")
            cells.append(f"{row['gold']:.3f} / {row['gold_greedy']:.3f} / " + (f"{p:.1e}" if p is not None else "(base)"))
        md.append(f"| {method} | " + " | ".join(cells) + " |")
    times = ", ".join(f"seed {r['seed']}: {r['stages_total_seconds']:.0f} s" for r in runs)
    md += ["", f"All stages: {times}.", ""]
    for seed, winners in goal.items():
        md.append(f"- seed {seed}: goal (an optimizer beats SFT on gold at greedy decoding, p < {alpha}) "
                  + (f"**held** by {', '.join(winners)}" if winners else "**not held**"))
    return "\n".join(md) + "\n", goal


def main(argv: list[str]) -> None:
    import argparse

    from trl_extras.utils.offline import use_offline_env

    use_offline_env()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--root", default="outputs/method_ranking")
    args, rest = parser.parse_known_args(argv)
    runs = [run_seed(seed, rest, args.root) for seed in args.seeds]
    summary, goal = summary_markdown(runs)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    payload = {"command": "python benchmarks/method_ranking.py " + " ".join(argv), "commit": commit, "runs": runs,
               "goal_winners_by_seed": goal}
    (RESULTS / "method_ranking.json").write_text(json.dumps(payload, indent=2, default=str))
    (RESULTS / "method_ranking_summary.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main(sys.argv[1:])

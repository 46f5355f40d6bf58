"""Method ranking on gold: the demo pipeline's final table (SFT, CEM, PPO, DPO vs the SFT model) as a benchmark.

    python benchmarks/method_ranking.py [--output_dir outputs/method_ranking] [pipeline flags ...]

Runs (or resumes) the testbed pipeline exactly as `trl-extras demo` does and writes
`benchmarks/results/method_ranking.{json,md}` plus the reward-vs-KL plot. AlpacaFarm (Dubois et al. 2023) found
PPO > best-of-n > expert iteration > SFT with a simulated judge; we report what the testbed shows, whatever it is.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str]) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from trl_extras.pipeline.config import PipelineConfig
    from trl_extras.pipeline.report import table_lines, write_report
    from trl_extras.pipeline.stages import run_pipeline
    from trl_extras.scripts.utils import parse_args

    (config,) = parse_args([PipelineConfig], ["--output_dir", "outputs/method_ranking", *argv], "method_ranking")
    start = time.perf_counter()
    ctx = run_pipeline(config)
    seconds = time.perf_counter() - start
    report_dir = Path(config.output_dir) / "report"
    write_report(ctx.results, report_dir, title="Method ranking on the testbed")
    table = ctx.results["evaluate"]["table"]
    ranking = sorted((r for r in table if r.get("gold") is not None), key=lambda r: -r["gold"])
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "config": {k: v for k, v in vars(config).items()},
        "table": table,
        "ranking_by_gold": [r["method"] for r in ranking],
        "stage_seconds": {k: v.get("seconds") for k, v in ctx.results.items() if isinstance(v, dict)},
        "total_seconds_this_run": round(seconds, 1),
    }
    (RESULTS / "method_ranking.json").write_text(json.dumps(payload, indent=2, default=str))
    md = [
        "# Method ranking on gold (testbed, `trl-extras demo` settings)",
        "",
        f"{ctx.results['evaluate']['num_prompts']} holdout prompts, one sample each at T={config.temperature}; win rate and "
        "two-sided binomial p-value of each model against the SFT model, judged by the gold reward (ties excluded).",
        "",
        "```",
        *table_lines(table),
        "```",
        "",
        "Ranking by gold: " + " > ".join(r["method"] for r in ranking),
        "",
        "![reward vs KL](method_ranking_reward_vs_kl.png)",
    ]
    (RESULTS / "method_ranking.md").write_text("\n".join(md) + "\n")
    if (report_dir / "reward_vs_kl.png").exists():
        shutil.copy(report_dir / "reward_vs_kl.png", RESULTS / "method_ranking_reward_vs_kl.png")
    print("\n".join(md))


if __name__ == "__main__":
    main(sys.argv[1:])

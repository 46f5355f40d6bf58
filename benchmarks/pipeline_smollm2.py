"""The real-model pipeline: `trl-extras pipeline --config recipes/pipeline_smollm2.yaml`, and README's table of it.

    python benchmarks/pipeline_smollm2.py [--output_dir outputs/pipeline_smollm2] [pipeline flags ...]

Runs (or resumes: finished stages whose settings match are reused) the pipeline with the SmolLM2 recipe
(SmolLM2-135M-Instruct + LoRA on the arithmetic task, 2 CPU cores: <= 45 min), then writes

* ``benchmarks/results/pipeline_smollm2_table.md``: the table the pipeline wrote (``report/table.md``), verbatim,
  under one line with every stage's time, their sum and the code's commit;
  README embeds it (``python -m trl_extras.utils.readme_tables`` checks they match);
* ``benchmarks/results/pipeline_smollm2/``: the run's whole report (``report.md``, ``results.json``, plots).

Stage times are the stages' own (``results.json``): on a resume they are those of the run that did each stage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
RECIPE = Path(__file__).parent.parent / "recipes" / "pipeline_smollm2.yaml"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def table_header(stage_seconds: dict, commit: str) -> str:
    """One line: each stage's seconds (as the stage measured itself), their sum in minutes, and the commit this
    table was written at (a resumed run reuses finished stages, which may have run at an earlier commit)."""
    stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in stage_seconds.items())
    total = sum(stage_seconds.values())
    return (f"`trl-extras pipeline --config recipes/pipeline_smollm2.yaml` (2 CPU cores; table written at {commit}): "
            f"stages {stages}; **{total / 60:.1f} min** in all.")


def main(argv=None) -> int:
    from trl_extras.pipeline.report import TABLE_FILE
    from trl_extras.scripts.pipeline import main as pipeline_main

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="outputs/pipeline_smollm2")
    parser.add_argument("--results_dir", default=str(RESULTS))
    args, rest = parser.parse_known_args(argv)
    load_at_start = os.getloadavg()[0]  # of this invocation (a resume: not that of the stages it reuses)
    start = time.perf_counter()
    pipeline_main(["--config", str(RECIPE), "--output_dir", args.output_dir, *rest])  # `trl-extras pipeline` itself
    seconds = time.perf_counter() - start
    report_dir = Path(args.output_dir) / "report"
    results = json.loads((report_dir / "results.json").read_text())
    stage_seconds = {k: v["seconds"] for k, v in results.items() if isinstance(v, dict) and "seconds" in v}
    results_dir = Path(args.results_dir)
    copy = results_dir / "pipeline_smollm2"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(report_dir, copy)
    (copy / "run.json").write_text(json.dumps(
        {"commit": _commit(), "stage_seconds": stage_seconds, "stages_total_seconds": round(sum(stage_seconds.values()), 1),
         "this_invocation_seconds": round(seconds, 1), "this_invocation_load_average_at_start": load_at_start}, indent=2) + "\n")
    table = (report_dir / TABLE_FILE).read_text()
    (results_dir / "pipeline_smollm2_table.md").write_text(f"{table_header(stage_seconds, _commit())}\n\n{table}\n")
    print(f"stages {sum(stage_seconds.values()):.0f} s, this invocation {seconds:.0f} s; wrote {copy}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

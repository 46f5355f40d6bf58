"""The `trl-extras` command line and a network-free import."""

import subprocess
import sys

from trl_extras.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command(capsys):
    assert main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_console_script_help():
    exe = [sys.executable, "-m", "trl_extras.cli", "--help"]
    out = subprocess.run(exe, capture_output=True, text=True, check=True).stdout
    assert "demo" in out and "ppo" in out


def test_testbed_command_with_config(tmp_path, sft_policy_path):
    import json

    recipe = tmp_path / "tb.yaml"
    recipe.write_text(f"output_dir: {tmp_path / 'out'}\nnum_clean_pairs: 50\nnum_dirty_pairs: 100\n")
    assert main(["testbed", "--config", str(recipe), "--num_dirty_pairs", "120"]) == 0
    summary = json.loads((tmp_path / "out" / "testbed_summary.json").read_text())
    assert summary["holdout_gold_mean_T1"] > 0.5
    lines = (tmp_path / "out" / "dirty_pairs.jsonl").read_text().splitlines()
    assert len(lines) == 120  # the flag wins over the recipe


def test_import_is_offline_and_lazy():
    """`import trl_extras` pulls in no HF library and starts no thread (hence no telemetry or network)."""
    code = (
        "import sys, threading; import trl_extras; "
        "heavy = [m for m in ('transformers', 'trl', 'huggingface_hub', 'torch') if m in sys.modules]; "
        "print(heavy, threading.active_count())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[] 1"

"""benchmarks/gpu.py, the one-command GPU run of issues 15 and 26: without CUDA it skips every GPU part cleanly, and
``--tiny`` runs every part's code path on CPU (tiny shapes) so that the GPU session finds no Python error. It records
the device it ran on (an H100 or an H200 is lent, never chosen) instead of assuming one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu.py"


def _run(tmp_path, *args, timeout):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp_path / "gpu.json").read_text()), (tmp_path / "gpu.md").read_text()


def test_without_cuda_every_gpu_part_is_skipped(tmp_path):
    result, md = _run(tmp_path, timeout=120)
    assert result["environment"]["cuda_available"] is False
    assert result["environment"]["versions"]["trl"]
    parts = result["parts"]
    assert set(parts) == {"pytest", "bf16_checks", "qlora_ppo_kl", "ppo_vs_grpo", "ensemble", "generation_backends"}
    assert all(p["status"] == "skipped" and "no CUDA" in p["reason"] for p in parts.values())
    assert "skipped" in md
    # the device is read, not assumed: here none, so the title and the record say so (no "H200" anywhere)
    assert result["environment"]["device"] == "cpu (no CUDA device)"
    assert md.startswith("# GPU run on cpu (no CUDA device)") and "H200" not in md


def test_the_device_is_recorded_by_name(tmp_path, monkeypatch):
    """With CUDA (faked here), the name and memory come from torch.cuda, whatever the card is."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("gpu_script", SCRIPT)
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)

    class Props:
        major, minor, total_memory, multi_processor_count = 9, 0, 81559 * 2**20, 132

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: Props)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (80 * 2**30, Props.total_memory))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    env = gpu.environment()
    assert env["device"] == env["gpu"] == "NVIDIA H100 80GB HBM3" and round(env["gpu_memory_gib"]) == 80
    md = gpu.markdown({"environment": env, "parts": {}})
    assert md.startswith("# GPU run on NVIDIA H100 80GB HBM3") and "GPU: NVIDIA H100 80GB HBM3 (80 GiB" in md


def test_unknown_part_is_refused(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--parts", "ensemble,nope"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown ['nope']" in proc.stderr


@pytest.mark.slow
def test_tiny_runs_every_part_on_cpu(tmp_path):
    """~5-10 min on 2 busy cores: every part's code on tiny shapes, the results merged into one JSON."""
    result, md = _run(tmp_path, "--tiny", "--models-dir", str(tmp_path / "models"), timeout=1800)
    parts = result["parts"]
    assert {k: p["status"] for k, p in parts.items()} == dict.fromkeys(parts, "ok"), parts
    T = 12
    q = parts["qlora_ppo_kl"]["result"]
    for est in ("exact", "k1"):
        run = q["runs"][est]
        assert run["completion_mean_length"] == [T, T]  # forced to full length
        # the on-policy single pass (1 epoch, 1 minibatch) computes the statistics in the update: no stats phase
        stats = set() if run["single_pass"] else {"logprob_kl_stats"}
        assert {"generation", "scoring", "rollout", "update", "step"} | stats <= set(run["mean_step_after_warmup"])
    g = parts["ppo_vs_grpo"]["result"]
    assert g["ppo"]["samples_per_s"] > 0 and g["grpo"]["samples_per_s"] > 0
    assert all(x == T for x in g["grpo"]["completion_mean_length"])
    e = parts["ensemble"]["result"]
    assert e["uses_fast_path"] and set(e["rows"]) == {"one_member", "ensemble_trunk_once", "ensemble_full_passes"}
    b = parts["bf16_checks"]["result"]
    assert b["grpo_ok"] and b["ppo_first_update_approx_kl"]
    assert parts["pytest"]["result"]["returncode"] == 0  # every GPU test skipped on CPU
    assert "## QLoRA PPO" in md and "## K=4 LoRA reward ensemble" in md
    gb = parts["generation_backends"]["result"]
    assert gb["backends"]["generate"]["samples_per_s"] > 0 and gb["backends"]["cb"]["samples_per_s"] > 0
    assert "## Generation backends" in md

"""Global advantage statistics across processes: ``accelerate launch --num_processes 2 --cpu`` equals one process."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "normalize_advantages_dist.py"
CPU_CONFIG = Path(__file__).parents[1] / "recipes" / "accelerate" / "cpu_2proc.yaml"


def _free_port() -> int:
    """A port the OS reports free (other test sessions on the machine may be launching process groups too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.distributed
def test_two_process_advantage_normalization_equals_single_process(tmp_path):
    from trl_extras.core.advantages import normalize_advantages
    from trl_extras.core.masked import masked_moments

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from normalize_advantages_dist import global_batch
    finally:
        sys.path.pop(0)

    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if launcher is None:
        pytest.skip("the `accelerate` launcher is not installed")
    out = tmp_path / "stats.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(_free_port())}
    # `accelerate launch --cpu --num_processes 2` starts a single process in accelerate 1.15 (its simple launcher
    # only fans out through mpirun with --mpirun_hostfile); the config selects the torchrun launcher + CPU/gloo.
    cmd = [launcher, "launch", "--config_file", str(CPU_CONFIG), "--main_process_port", env["MASTER_PORT"]]
    cmd += [str(SCRIPT), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["num_processes"] == 2

    adv, mask = global_batch()
    mean, var, count = masked_moments(adv, mask)
    for keep_mean in (False, True):
        got = result[f"keep_mean={keep_mean}"]
        expected = normalize_advantages(adv, mask, mode="batch", keep_mean=keep_mean)
        assert torch.allclose(torch.tensor(got["normalized"], dtype=torch.float64), expected, atol=1e-10)
        assert got["count"] == count.item()
        assert got["input_mean"] == pytest.approx(mean.item(), abs=1e-12)
        assert got["input_var"] == pytest.approx(var.item(), abs=1e-12)
    # sanity: a per-shard normalization would have given different numbers
    shard = normalize_advantages(adv[:4], mask[:4], mode="batch")
    assert not torch.allclose(shard, expected[:4], atol=1e-3)


@pytest.mark.distributed
def test_ppo_trains_under_accelerate_launch_two_processes(tmp_path, tiny_paths):
    """PPOTrainer inside `accelerate launch` (DDP over gloo, 2 CPU processes): trains and logs global metrics."""
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if launcher is None:
        pytest.skip("the `accelerate` launcher is not installed")
    out = tmp_path / "ppo.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(_free_port())}
    cmd = [launcher, "launch", "--config_file", str(CPU_CONFIG), "--main_process_port", env["MASTER_PORT"]]
    cmd += [str(SCRIPT.parent / "ppo_ddp.py"), tiny_paths["policy"], str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["num_processes"] == 2 and result["global_step"] == 2
    assert result["rollout_logs"] and all(torch.isfinite(torch.tensor(e["reward"])) for e in result["rollout_logs"])

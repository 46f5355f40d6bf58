"""Shared test helpers: training arguments that run anywhere (CPU, fp32, no hub, no saving, no reporting)."""

CPU_TRAINING_ARGS = dict(
    use_cpu=True,
    bf16=False,  # TRL configs default to bf16=True
    report_to="none",
    save_strategy="no",
    gradient_checkpointing=False,  # TRL configs default to gradient checkpointing
    logging_steps=1,
    disable_tqdm=True,
)


def cpu_config(config_cls, output_dir, /, **overrides):
    """``config_cls(output_dir=..., **CPU_TRAINING_ARGS, **overrides)`` — overrides (``output_dir`` too) win."""
    output_dir = overrides.pop("output_dir", output_dir)
    return config_cls(output_dir=str(output_dir), **{**CPU_TRAINING_ARGS, **overrides})


# ---------------------------------------------------------------------------------------------------------------
# `accelerate launch` with 2 CPU processes (gloo): DDP or DeepSpeed ZeRO-2/3
# ---------------------------------------------------------------------------------------------------------------
DEEPSPEED_CPU_CONFIG = """compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config:
  deepspeed_multinode_launcher: standard
  offload_optimizer_device: none
  offload_param_device: none
  zero3_init_flag: {zero3_init}
  zero3_save_16bit_model: true
  zero_stage: {stage}
num_machines: 1
num_processes: 2
machine_rank: 0
main_training_function: main
mixed_precision: {mixed_precision}
rdzv_backend: static
same_network: true
use_cpu: true
"""


def _free_port() -> int:
    """A port the OS reports free (other test sessions on the machine may be launching process groups too)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_processes(script, backend: str, workdir, *args: str, timeout: int = 600):
    """Run ``script *args`` under ``accelerate launch`` with 2 CPU processes: ``backend`` is ``"ddp"`` (the repo's
    ``recipes/accelerate/cpu_2proc.yaml``) or ``"zero2"``/``"zero3"`` (DeepSpeed, skipped when not installed).
    ``"zero2_bf16"`` is ZeRO-2 with bf16 mixed precision (the script must pass ``bf16=True`` too). Returns the
    finished process; fails the test with the tail of stderr when it exits non-zero."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if launcher is None:
        pytest.skip("the `accelerate` launcher is not installed")
    recipes = Path(__file__).parents[1] / "recipes" / "accelerate"
    if backend == "ddp":
        config = recipes / "cpu_2proc.yaml"
    elif backend in ("zero2", "zero3"):  # the CPU configs the repository ships (README's documented commands)
        pytest.importorskip("deepspeed")
        config = recipes / f"{backend}_cpu.yaml"
    else:
        pytest.importorskip("deepspeed")
        stage = {"zero2": 2, "zero3": 3, "zero2_bf16": 2}[backend]
        config = workdir / f"{backend}.yaml"
        precision = "bf16" if backend.endswith("_bf16") else '"no"'
        config.write_text(
            DEEPSPEED_CPU_CONFIG.format(stage=stage, zero3_init=str(stage == 3).lower(), mixed_precision=precision)
        )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(_free_port())}
    # `accelerate launch --cpu --num_processes 2` starts a single process in accelerate 1.15 (its simple launcher
    # only fans out through mpirun with --mpirun_hostfile); the configs select the torchrun launcher + CPU/gloo.
    cmd = [launcher, "launch", "--config_file", str(config), "--main_process_port", env["MASTER_PORT"], str(script)]
    proc = subprocess.run(cmd + list(args), env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return proc


def reward_trainer_margins(trainer, dataset):
    """``(N,)`` margins r(chosen) − r(rejected) exactly as ``RewardTrainer.compute_loss`` sees them: its own dataset
    preparation, collator and chosen/rejected chunking (the reference the package's scoring is pinned to)."""
    import torch

    prepared = trainer._prepare_dataset(dataset, trainer.processing_class, trainer.args, "check")
    rows = [{k: prepared[i][k] for k in ("chosen_ids", "rejected_ids")} for i in range(len(prepared))]
    batch = trainer.data_collator(rows)
    model = trainer.model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    chosen, rejected = torch.chunk(logits.squeeze(-1), 2)
    return chosen - rejected

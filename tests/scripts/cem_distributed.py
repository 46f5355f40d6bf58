"""CEM in one process or under `accelerate launch` (DDP / DeepSpeed, 2 CPU processes): run by tests/test_distributed.py.

    python cem_distributed.py <policy> <result.json> <output_dir> <per_device_train_batch_size>
        [--grad-accum N] [--resume] [--resume-other-layout]

Two rounds on 12 testbed prompts (3 sampling chunks of 4 prompts: process 0 samples two, process 1 one), the
heuristic reward optimized, the gold reward tracked, an exact KL term in the fine-tuning loss, 4 eval prompts. The
test runs it with batch 2 x 2 accumulation steps in one process and batch 2 on each of 2 processes (the same
micro-batches, so the same sums in the same order) and compares the round datasets. Writes (main process) what the
test checks: backend, number of processes, wall time, history. ``--resume-other-layout``: resume a run another launch
layout made (2 processes x batch 2 -> 1 process x batch 2 x 2 accumulation steps: the same global batch), to redo its
last round in one process from that run's own previous round model.
"""

import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def main(policy_path: str, out: str, output_dir: str, batch_size: int, grad_accum: int, resume: bool,
         other_layout: bool = False) -> None:
    from trl_extras import CEMTrainer
    from trl_extras.testbed import TestbedConfig, gold_reward_fn, heuristic_reward_fn, prompt_dataset
    from trl_extras.trainers.cem import CEMConfig

    config = TestbedConfig(num_train_prompts=12, num_holdout_prompts=4)
    args = CEMConfig(
        output_dir=output_dir, use_cpu=True, bf16=False, report_to="none", save_strategy="no", disable_tqdm=True,
        gradient_checkpointing=False, logging_steps=1, num_rounds=2, num_generations=4, generation_chunk_size=16,
        max_completion_length=8, elite_top_k=1, kl_coef=0.1, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum, num_train_epochs=2, learning_rate=5e-3, lr_scheduler_type="constant",
        eval_num_generations=2, seed=0, resume=resume, plot=False,
        resume_allow_changes=["gradient_accumulation_steps"] if other_layout else None,
    )
    start = time.perf_counter()
    trainer = CEMTrainer(policy_path, heuristic_reward_fn, args, train_dataset=prompt_dataset("train", config),
                         eval_dataset=prompt_dataset("holdout", config), eval_reward_funcs=gold_reward_fn)
    history = trainer.train()
    trainer.save_model(os.path.join(output_dir, "final"))
    wall = time.perf_counter() - start
    if args.process_index == 0:
        from accelerate import PartialState

        state = PartialState()
        # gradient hooks left on a parameter: one per live DeepSpeed ZeRO optimizer (a round's engine not destroyed)
        hooks = max(len(getattr(p, "_post_accumulate_grad_hooks", None) or {}) for p in trainer.model.parameters())
        result = {"num_processes": state.num_processes, "distributed_type": str(state.distributed_type),
                  "wall_s": wall, "history": history, "grad_hooks_per_parameter": hooks}
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    flags = sys.argv[5:]
    grad_accum = int(flags[flags.index("--grad-accum") + 1]) if "--grad-accum" in flags else 1
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), grad_accum, resume="--resume" in flags,
         other_layout="--resume-other-layout" in flags)

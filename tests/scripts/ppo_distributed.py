"""PPO under `accelerate launch` (DDP or DeepSpeed, 2 CPU processes): run by tests/test_distributed.py.

Trains 3 steps (the first a value warm-up step, policy frozen, unless `--compare`), checkpoints at step 2,
evaluates (a rollout of the eval prompts), saves the final policy, then resumes from checkpoint-2 in a fresh
trainer to step 4. Writes what the test checks to a JSON file: the backend, the optimizer's learning rates, whether
the policy and value weights moved (and only the value one during the warm-up), the eval metrics, the trained
policy's weights (to compare with the saved model) and the resumed state.
"""

import json
import os
import sys
from contextlib import nullcontext

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402


def length_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def snapshot(module) -> list[torch.Tensor]:
    """Full copies of a module's parameters (gathered first under DeepSpeed ZeRO-3, where each rank holds a shard)."""
    params = list(module.parameters())
    ctx = nullcontext()
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        ctx = deepspeed.zero.GatheredParameters(params)
    with ctx:
        return [p.detach().float().cpu().clone() for p in params]


def moved(before, after) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, after))


def make_trainer(policy_path, output_dir, max_steps, use_peft, reward_model, compare, checkpointing=False, bf16=False):
    from datasets import Dataset

    from trl_extras import PPOConfig, PPOTrainer

    prompts = [f"{i % 10} {(i * 7) % 10} >" for i in range(16)]
    args = PPOConfig(
        output_dir=output_dir, use_cpu=True, bf16=bf16, report_to="none", save_strategy="steps", save_steps=2,
        gradient_checkpointing=checkpointing, disable_tqdm=True, logging_steps=1, per_device_train_batch_size=4,
        num_mini_batches=1, num_ppo_epochs=1, max_steps=max_steps, max_completion_length=6, learning_rate=1e-2,
        value_learning_rate=3e-3, lr_scheduler_type="constant", adaptive_kl=True, target_kl=0.01, kl_horizon=100,
        seed=0,
        # `--compare`: a run every backend must reproduce exactly -- no value warm-up and no gradient clipping (under
        # DeepSpeed clipping is joint over policy + value and the warm-up advances the policy's AdamW step count)
        value_warmup_steps=0 if compare else 1, max_grad_norm=0.0 if compare else 1.0,
    )
    peft_config = None
    if use_peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    # with a reward-model path the value model is initialised from it (and the RM scores under DeepSpeed)
    reward_funcs = length_reward if reward_model is None else [reward_model, length_reward]
    return PPOTrainer(model=policy_path, reward_funcs=reward_funcs, args=args, peft_config=peft_config,
                      train_dataset=Dataset.from_dict({"prompt": prompts}),
                      eval_dataset=Dataset.from_dict({"prompt": prompts[:8]}))


class Snapshots:
    """A callback that records policy/value weights when training starts and after each optimizer step."""

    def __init__(self, trainer):
        from transformers import TrainerCallback

        outer = self
        self.trainer, self.policy, self.value = trainer, [], []

        class _CB(TrainerCallback):
            # the first snapshot after the engine is built: DeepSpeed bf16 casts the weights when it prepares them
            def on_train_begin(self, args, state, control, **kwargs):
                outer.policy.append(snapshot(outer.trainer.policy))
                outer.value.append(snapshot(outer.trainer.value_model))

            def on_step_end(self, args, state, control, **kwargs):
                outer.policy.append(snapshot(outer.trainer.policy))
                outer.value.append(snapshot(outer.trainer.value_model))

        trainer.add_callback(_CB())


def main(policy_path: str, out: str, use_peft: bool, reward_model: str | None, compare: bool,
         checkpointing: bool, bf16: bool) -> None:
    work = os.path.dirname(out)
    trainer = make_trainer(policy_path, os.path.join(work, "ppo"), max_steps=3, use_peft=use_peft, reward_model=reward_model,
                           compare=compare, checkpointing=checkpointing, bf16=bf16)
    snaps = Snapshots(trainer)
    trainer.train()
    eval_metrics = trainer.evaluate()  # sampled from the trained policy, logged as eval_* like GRPO's
    lrs = sorted({group["lr"] for group in trainer.optimizer.param_groups})
    final_dir = os.path.join(work, "final")
    trainer.save_model(final_dir)
    trained_policy = snapshot(trainer.policy)
    trainer.accelerator.wait_for_everyone()

    result = {
        "gradient_checkpointing": bool(getattr(trainer.policy, "is_gradient_checkpointing", False)),
        "policy_dtypes": sorted({str(p.dtype) for p in trainer.policy.parameters()}),
        "value_dtypes": sorted({str(p.dtype) for p in trainer.value_model.parameters()}),
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "model_class": type(trainer.model).__name__,
        "global_step": trainer.state.global_step,
        "rollout_logs": [e for e in trainer.state.log_history if "reward" in e],
        "learning_rates": lrs,
        # step 1 is the value warm-up (policy frozen), steps 2-3 train both
        "policy_moved_in_warmup": moved(snaps.policy[0], snaps.policy[1]),
        "value_moved_in_warmup": moved(snaps.value[0], snaps.value[1]),
        "policy_moved_after": moved(snaps.policy[1], snaps.policy[2]) and moved(snaps.policy[2], snaps.policy[3]),
        "value_moved_after": moved(snaps.value[1], snaps.value[2]) and moved(snaps.value[2], snaps.value[3]),
        "kl_coef": trainer.kl_ctl.value,
        "initial_kl_coef": trainer.args.kl_coef,
        "eval_metrics": eval_metrics,
    }
    if trainer.accelerator.is_main_process:
        # the test compares these with what `from_pretrained(final_dir)` loads (in its own process: under ZeRO-3,
        # loading a model here would start collective calls on one rank only)
        names = [n for n, _ in trainer.policy.named_parameters()]
        torch.save(dict(zip(names, trained_policy)), os.path.join(work, "trained_policy.pt"))
        result["final_dir"] = final_dir
        result["checkpoint_files"] = sorted(os.listdir(os.path.join(work, "ppo", "checkpoint-2")))

    # resume from checkpoint-2 in a fresh trainer and go on to the end (step 3): the same max_steps, since a resume
    # with another schedule length is refused (the restored learning-rate schedule was built for the old one)
    resumed = make_trainer(policy_path, os.path.join(work, "ppo"), max_steps=3, use_peft=use_peft, reward_model=reward_model,
                           compare=compare, checkpointing=checkpointing, bf16=bf16)
    restored = []
    load = resumed._load_ppo_state
    resumed._load_ppo_state = lambda path: (load(path), restored.append(resumed.kl_ctl.value))
    at_start = {}

    from transformers import TrainerCallback

    class AtTrainBegin(TrainerCallback):  # after the checkpoint was loaded, before any new step
        def on_train_begin(self, args, state, control, **kwargs):
            at_start["policy"], at_start["value"] = snapshot(resumed.policy), snapshot(resumed.value_model)

    resumed.add_callback(AtTrainBegin())
    resumed.train(resume_from_checkpoint=os.path.join(work, "ppo", "checkpoint-2"))
    result["resumed_global_step"] = resumed.state.global_step
    result["resumed_kl_coef"] = restored
    # the resumed trainer starts from the checkpointed weights: policy AND value model
    result["resumed_policy_equals_checkpoint"] = not moved(at_start["policy"], snaps.policy[2])
    result["resumed_value_equals_checkpoint"] = not moved(at_start["value"], snaps.value[2])

    if trainer.accelerator.is_main_process:
        with open(out, "w") as f:
            json.dump(result, f)
    trainer.accelerator.wait_for_everyone()
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    flags = sys.argv[3:]
    rm = flags[flags.index("--reward-model") + 1] if "--reward-model" in flags else None
    main(sys.argv[1], sys.argv[2], use_peft="--peft" in flags, reward_model=rm, compare="--compare" in flags,
         checkpointing="--gradient-checkpointing" in flags, bf16="--bf16" in flags)

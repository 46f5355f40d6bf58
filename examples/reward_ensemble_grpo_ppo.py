"""Reward ensemble: train K reward models, calibrate them, then optimize the penalized ensemble reward
(mean − λ·variance) with TRL's GRPOTrainer and with trl_extras' PPOTrainer.

    python examples/reward_ensemble_grpo_ppo.py                              # testbed: tiny models, CPU, seconds
    python examples/reward_ensemble_grpo_ppo.py --model testbed:smollm2 --lora
    python examples/reward_ensemble_grpo_ppo.py --model path/to/sft-model --pairs pairs.jsonl --prompts prompts.jsonl --lora

Look at: ``ensemble/mean`` and ``ensemble/std`` in both trainers' logs (the members' disagreement on the policy's
answers: a rising std means the policy is moving where the reward models disagree) and the ensemble's saved folder,
which any trainer takes as ``reward_funcs="out/rm-ensemble"``.
"""

import argparse

from trl_extras import PPOConfig, PPOTrainer, RewardEnsemble, train_reward_ensemble
from trl_extras.testbed import task_module, testbed_model_path

# isort: split
# trl after trl_extras: importing trl_extras first keeps bitsandbytes quiet (README, "Limits")
from datasets import load_dataset
from trl import GRPOConfig, GRPOTrainer, RewardConfig

CPU = dict(use_cpu=True, bf16=False, report_to="none", save_strategy="no", gradient_checkpointing=False,
           logging_steps=1, disable_tqdm=True)  # fmt: skip


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="testbed:tiny", help="SFT model path (or testbed:tiny / testbed:smollm2)")
    p.add_argument("--pairs", help="reward-model training pairs (JSON/JSONL); default: the testbed's")
    p.add_argument("--prompts", help="RL prompts (JSON/JSONL with a 'prompt' column); default: the testbed's")
    p.add_argument("--lora", action="store_true", help="K LoRA adapters on one frozen base; LoRA policies")
    p.add_argument("--k", type=int, default=3, help="ensemble members")
    p.add_argument("--coef", type=float, default=0.1, help="λ of mean − λ·variance (Coste et al.: 0.1 for RL)")
    p.add_argument("--output_dir", default="outputs/examples/ensemble")
    p.add_argument("--num_pairs", type=int, default=600)
    p.add_argument("--rm_steps", type=int, default=-1, help="optimizer steps per member (-1: one epoch)")
    p.add_argument("--rl_steps", type=int, default=8, help="GRPO and PPO optimizer steps")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_completion_length", type=int, default=16)
    args = p.parse_args()

    task = task_module("arithmetic" if args.model == "testbed:smollm2" else "sort_digits")
    pairs = load_dataset("json", data_files=args.pairs, split="train") if args.pairs else task.clean_pairs(
        args.num_pairs, seed=2)
    prompts = (load_dataset("json", data_files=args.prompts, split="train") if args.prompts
               else task.prompt_dataset("train"))
    model = testbed_model_path(args.model)
    lora = {}
    if args.lora:
        from peft import LoraConfig

        lora = {"rm": LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="SEQ_CLS"),
                "policy": LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")}

    # 1. K members differing by seed (with --lora: K adapters on one base), saved under output_dir/rm-ensemble
    rm_dir = f"{args.output_dir}/rm-ensemble"
    rm_args = RewardConfig(output_dir=rm_dir, max_steps=args.rm_steps, num_train_epochs=1, learning_rate=1e-3,
                           per_device_train_batch_size=args.batch_size, max_length=256, **CPU)  # fmt: skip
    ensemble = train_reward_ensemble(model, pairs, rm_args, k=args.k, peft_config=lora.get("rm"),
                                     calibration_size=None, penalty="variance", coef=args.coef)  # fmt: skip
    # 2. calibrate: Bradley–Terry scores are shift-invariant, so standardize each member on reference completions
    #    (here the pairs' answers; the policy's own samples are the better reference when you have them)
    reference = pairs.select(range(min(64, len(pairs))))
    stats = ensemble.calibrate(list(reference["prompt"]) * 2, list(reference["chosen"]) + list(reference["rejected"]))
    ensemble.save_pretrained(rm_dir)
    print(f"members' means {[round(m, 3) for m in stats['mean']]}, stds {[round(s, 3) for s in stats['std']]} "
          f"before calibration; saved to {rm_dir}")
    ensemble = RewardEnsemble.from_pretrained(rm_dir, penalty="variance", coef=args.coef)
    scores = ensemble.score(list(reference["prompt"]), list(reference["chosen"]))  # members (K, N), mean, var, std
    penalized = scores.penalized("variance", args.coef)  # mean − λ·var; "std"; "min" (worst case)
    print(f"chosen answers: members' std {float(scores.std.mean()):.3f}, penalized reward {float(penalized.mean()):.3f}")

    # 3. TRL's GRPOTrainer takes the ensemble as a reward function as is
    grpo = GRPOTrainer(
        model=model, reward_funcs=ensemble, train_dataset=prompts, peft_config=lora.get("policy"),
        args=GRPOConfig(output_dir=f"{args.output_dir}/grpo", max_steps=args.rl_steps, learning_rate=1e-4,
                        per_device_train_batch_size=args.batch_size, num_generations=4,
                        max_completion_length=args.max_completion_length, **CPU),
    )
    grpo.train()
    # 4. trl_extras' PPOTrainer takes the folder (or the object); its value model starts from member 0
    ppo = PPOTrainer(
        model=model, reward_funcs=rm_dir, train_dataset=prompts, peft_config=lora.get("policy"),
        args=PPOConfig(output_dir=f"{args.output_dir}/ppo", max_steps=args.rl_steps, learning_rate=1e-4,
                       per_device_train_batch_size=args.batch_size, max_completion_length=args.max_completion_length,
                       kl_estimator="exact", kl_coef=0.05, **CPU),
    )
    ppo.train()

    for name, trainer in (("GRPO", grpo), ("PPO", ppo)):
        logged = [h for h in trainer.state.log_history if "ensemble/std" in h]
        first, last = logged[0], logged[-1]
        print(f"{name}: ensemble/mean {first['ensemble/mean']:.3f} -> {last['ensemble/mean']:.3f}, "
              f"ensemble/std {first['ensemble/std']:.3f} -> {last['ensemble/std']:.3f}")


if __name__ == "__main__":
    main()

"""Two-stage reward model: many cheap "dirty" pairs first, then few clean ones, head and adapter kept between stages.

    python examples/reward_two_stage.py                                   # testbed: tiny model, CPU, seconds
    python examples/reward_two_stage.py --model testbed:smollm2 --lora    # SmolLM2-135M, LoRA reward model
    python examples/reward_two_stage.py --model path/to/your/sft-model --dirty_pairs dirty.jsonl \
        --clean_pairs clean.jsonl --eval_pairs heldout.jsonl --lora

Pairs are any format TRL's RewardTrainer reads (``prompt``/``chosen``/``rejected``, text or messages). Look at:
held-out accuracy after stage 1 (``eval_stage1/accuracy``) and after stage 2: the clean stage should not lose what
the dirty one learned. The model folder it writes (``<output_dir>``; a LoRA adapter folder with ``--lora``) is a
reward every trainer takes: ``PPOTrainer(reward_funcs="out/rm")``.
"""

import argparse

from datasets import load_dataset

from trl_extras import TwoStageRewardConfig, TwoStageRewardTrainer
from trl_extras.testbed import task_module, testbed_model_path


def pairs(path, testbed_pairs):
    """Your pairs from a JSON/JSONL file, else the testbed task's."""
    return load_dataset("json", data_files=path, split="train") if path else testbed_pairs


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="testbed:tiny", help="SFT model path (or testbed:tiny / testbed:smollm2)")
    p.add_argument("--dirty_pairs", help="stage-1 pairs (JSON/JSONL); default: the testbed's heuristic-labelled pairs")
    p.add_argument("--clean_pairs", help="stage-2 pairs; default: the testbed's gold-labelled pairs (10%% flipped)")
    p.add_argument("--eval_pairs", help="held-out pairs; default: testbed pairs with gold labels")
    p.add_argument("--lora", action="store_true", help="train a LoRA adapter (with its score head), not the full model")
    p.add_argument("--output_dir", default="outputs/examples/rm")
    p.add_argument("--num_dirty", type=int, default=2000)
    p.add_argument("--num_clean", type=int, default=300)
    p.add_argument("--num_eval", type=int, default=200)
    p.add_argument("--dirty_steps", type=int, default=-1, help="stage-1 optimizer steps (-1: one epoch)")
    p.add_argument("--clean_steps", type=int, default=-1, help="stage-2 optimizer steps (-1: two epochs)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_length", type=int, default=256)
    args = p.parse_args()

    # the testbed's data match its models: sort-the-digits for the tiny model, arithmetic for SmolLM2
    task = task_module("arithmetic" if args.model == "testbed:smollm2" else "sort_digits")
    dirty = pairs(args.dirty_pairs, task.dirty_pairs(args.num_dirty, seed=1))
    clean = pairs(args.clean_pairs, task.clean_pairs(args.num_clean, flip_rate=0.1, seed=2))
    held_out = pairs(args.eval_pairs, task.clean_pairs(args.num_eval, flip_rate=0.0, seed=3))

    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="SEQ_CLS")
    config = TwoStageRewardConfig(
        output_dir=args.output_dir,
        pretrain_num_train_epochs=1, pretrain_max_steps=args.dirty_steps, pretrain_learning_rate=1e-3,
        num_train_epochs=2, max_steps=args.clean_steps, learning_rate=3e-4,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        max_length=args.max_length, eval_strategy="no", save_strategy="no", logging_steps=10,
        report_to="none", use_cpu=True, bf16=False, gradient_checkpointing=False, disable_tqdm=True,
    )
    trainer = TwoStageRewardTrainer(
        model=testbed_model_path(args.model),  # a testbed name becomes its cached folder; your path passes through
        args=config, pretrain_dataset=dirty, train_dataset=clean, eval_dataset=held_out, peft_config=peft_config,
    )
    trainer.train()  # stage 1 (dirty) -> <output_dir>/stage1, then stage 2 (clean)
    trainer.save_model(args.output_dir)

    after_dirty = trainer.stage_metrics["stage1"]
    after_clean = trainer.stage_metrics["stage2"]
    print(f"held-out accuracy after the dirty stage: {after_dirty['eval_stage1/accuracy']:.3f}")
    print(f"held-out accuracy after the clean stage: {after_clean['eval_stage2/accuracy']:.3f}")
    print(f"reward model saved to {args.output_dir}  (pass it as reward_funcs={args.output_dir!r})")


if __name__ == "__main__":
    main()

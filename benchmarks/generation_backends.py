"""Rollout throughput and peak memory of each generation backend on the same prompts (issue 25, item 6).

Backends (``trl_extras.modeling.generation``): ``generate`` (the default, HF ``generate`` in left-padded batches),
``cb`` (transformers' continuous batching, ``generate_batch``), and ``vllm`` (TRL's ``VLLMGeneration``, colocate; only
where ``vllm`` is installed and CUDA is present). Each backend samples ``--prompts x --n`` completions of at most
``--length`` tokens at temperature 1 through ``generate_rollouts`` (the path PPO and CEM use); runs are interleaved
A, B, A, B, ... (``--repeats`` rounds) so that both see the same machine load, and the 1-minute load average is
recorded around each run. Reported: median samples/s (wall clock), the CPU seconds of that run (all threads:
``time.process_time``, less sensitive than wall time to other jobs on a shared machine), median generated tokens/s,
and peak memory (CUDA: ``torch.cuda.max_memory_allocated``, weights included; CPU: the peak growth of the process's
resident memory during a run, polled every 2 ms, the largest over the runs).

Models: SmolLM2-135M-Instruct (``--model smollm2``: ``trl_extras.testbed.smollm2_path``, the real weights) and the
Qwen2.5-0.5B shape (``--model qwen-shape``: random weights, ``trl_extras.testbed.shapes``; ``--tiny-qwen`` scales it
to CPU size). A random model rarely samples its EOS, so its completions run to ``--length``.

    OMP_NUM_THREADS=2 python benchmarks/generation_backends.py --model smollm2 --prompts 8 --n 4 --length 32
    python benchmarks/generation_backends.py --model qwen-shape --tiny-qwen --prompts 8 --n 4 --length 32

Writes ``benchmarks/results/generation_backends_<model>.json`` and ``.md``. ``benchmarks/gpu.py`` (part
``generation_backends``) calls :func:`measure_backends` on the GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

RESULTS = Path(__file__).parent / "results"
BACKENDS = ("generate", "cb", "vllm")


def vllm_available() -> bool:
    import importlib.util

    import torch

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def make_backend(name: str, model, tokenizer, cb_config: dict | None = None):
    """The sampler of one backend, built as the trainers build it (``make_sampler`` from GRPOConfig-named fields)."""
    from types import SimpleNamespace

    from trl_extras.modeling.generation import make_sampler

    fields = dict(use_vllm=False, use_transformers_continuous_batching=False)
    if name == "cb":
        fields.update(use_transformers_continuous_batching=True, transformers_continuous_batching_config=cb_config)
    elif name == "vllm":
        fields.update(use_vllm=True, vllm_mode="colocate", vllm_server_base_url=None, vllm_server_host="0.0.0.0",
                      vllm_server_port=8000, vllm_server_timeout=240.0, vllm_group_port=51216,
                      vllm_tensor_parallel_size=1, vllm_gpu_memory_utilization=0.3, vllm_max_model_length=None,
                      vllm_enable_sleep_mode=False, vllm_model_impl="vllm", max_completion_length=64)
    sampler = make_sampler(SimpleNamespace(**fields), model, tokenizer)
    if sampler.needs_weight_sync:
        sampler.sync_weights(model)
    return sampler


class RssPeak:
    """Peak resident memory growth of this process during a block (CPU runs): /proc/self/statm polled every 2 ms by
    a thread (``ru_maxrss`` only ever grows, so it cannot tell two backends apart)."""

    def __enter__(self):
        import threading

        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def _reset_peak():
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def measure_backends(model, tokenizer, prompts: list, backends, *, n: int, length: int, repeats: int,
                     batch_size: int = 64, cb_config: dict | None = None, seed: int = 0) -> dict:
    """``{backend: {samples_per_s, tokens_per_s, peak_mib, runs: [...]}}`` from ``repeats`` interleaved rounds."""
    import torch

    from trl_extras.modeling.generation import generate_rollouts

    samplers = {name: make_backend(name, model, tokenizer, cb_config) for name in backends}
    out = {name: {"runs": []} for name in backends}
    for r in range(-1, repeats):  # round -1: warm-up (kernels, allocator, the engine's first call), not reported
        for name in backends:
            _reset_peak()
            load_before = os.getloadavg()[0]
            torch.manual_seed(seed + r)
            with RssPeak() as rss:
                c0 = time.process_time()  # CPU seconds of every thread of the process (robust to a busy machine)
                t0 = time.perf_counter()
                rollout = generate_rollouts(model, tokenizer, prompts, max_new_tokens=length, temperature=1.0,
                                            num_generations=n, batch_size=batch_size, sampler=samplers[name])
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - t0
                cpu_seconds = time.process_time() - c0
            row = {"round": r, "seconds": seconds, "cpu_seconds": cpu_seconds, "samples": len(rollout),
                   "tokens": int(rollout.completion_mask.sum()), "load_1min_before": load_before,
                   "load_1min_after": os.getloadavg()[0],
                   "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available()
                   else rss.growth_mib}
            if r >= 0:
                out[name]["runs"].append(row)
            else:
                out[name]["warmup"] = row
    for name in backends:
        runs = out[name]["runs"]
        med = sorted(runs, key=lambda x: x["seconds"])[len(runs) // 2]
        out[name].update(samples_per_s=med["samples"] / med["seconds"], tokens_per_s=med["tokens"] / med["seconds"],
                         median_seconds=med["seconds"], median_cpu_seconds=med["cpu_seconds"],
                         peak_mib=max(x["peak_mib"] for x in runs + [out[name]["warmup"]]))
        samplers[name].close()
    return out


def load_model(a):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.model == "smollm2":
        from trl_extras.testbed.smollm2 import smollm2_path

        path = smollm2_path(progress=False)
        shape = "SmolLM2-135M-Instruct (real weights)"
    else:
        import tempfile

        from trl_extras.testbed.shapes import QWEN25_05B, make_shaped_checkpoints

        spec = QWEN25_05B
        if a.tiny_qwen:
            spec = QWEN25_05B.scaled(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                     num_attention_heads=4, num_key_value_heads=2, vocab_size=4096)
        paths = make_shaped_checkpoints(Path(tempfile.gettempdir()) / f"gen-backends-{spec.name}", spec, reward=False,
                                        dtype="float32" if device == "cpu" else "bfloat16")
        path = paths["policy"]
        shape = f"{spec.name} (random weights; hidden {spec.hidden_size}, {spec.num_hidden_layers} layers, " \
                f"V={spec.vocab_size})"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, AutoTokenizer.from_pretrained(path), shape


def bench_prompts(k: int) -> list:
    from trl_extras.testbed import TestbedConfig, prompt_dataset

    return list(prompt_dataset("train", TestbedConfig(num_train_prompts=max(k, 8), num_holdout_prompts=8))["prompt"])[:k]


def markdown(res: dict) -> str:
    lines = [f"{res['model']} on {res['machine']}, {res['started']}: {res['prompts']} prompts x {res['n']} samples, "
             f"<= {res['length']} new "
             f"tokens, temperature 1; {res['repeats']} interleaved rounds after a warm-up round (median reported).", "",
             "| backend | samples/s | tokens/s | median s | CPU s | peak MiB | load avg (1 min) before runs |",
             "|---|---|---|---|---|---|---|"]
    for name, r in res["backends"].items():
        loads = ", ".join(f"{x['load_1min_before']:.2f}" for x in r["runs"])
        lines.append(f"| {name} | {r['samples_per_s']:.2f} | {r['tokens_per_s']:.1f} | {r['median_seconds']:.2f} | "
                     f"{r['median_cpu_seconds']:.1f} | {r['peak_mib']:.0f} | {loads} |")
    if res.get("not_run"):
        lines += ["", "Not run: " + "; ".join(f"{k} ({v})" for k, v in res["not_run"].items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("smollm2", "qwen-shape"), default="smollm2")
    p.add_argument("--tiny-qwen", action="store_true", help="the Qwen2.5-0.5B shape scaled to CPU size")
    p.add_argument("--backends", default="generate,cb,vllm")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds after the warm-up (>= 3: the project's rule for a reported ratio)")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    import torch

    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    not_run = {}
    if "vllm" in backends and not vllm_available():
        backends.remove("vllm")
        not_run["vllm"] = "vllm not installed or no CUDA device on this machine"
    model, tok, shape = load_model(a)
    prompts = bench_prompts(a.prompts)
    res = measure_backends(model, tok, prompts, backends, n=a.n, length=a.length, repeats=a.repeats)
    machine = torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})"
    result = {"model": shape, "machine": machine, "prompts": a.prompts, "n": a.n, "length": a.length,
              "repeats": a.repeats, "backends": res, "not_run": not_run,
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"generation_backends_{a.model}{'_tiny' if a.tiny_qwen else ''}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Time to quality: PPO (trl_extras) against TRL 1.16's GRPO, holdout gold against training wall-clock seconds.

What a user chooses by is not samples/s but how soon a trainer reaches a given quality. Each trainer runs at its
recommended settings (PPO: ``recipes/ppo_testbed.yaml`` on the testbed, the SmolLM2 pipeline's PPO stage on
arithmetic; GRPO: TRL 1.16's defaults - beta=0, no reference model - with the learning rate and group size of
``recipes/grpo_exact_kl_testbed.yaml`` / the SmolLM2 pipeline), on the same train prompts, SFT starting policy,
rollout batch (sequences sampled per rollout) and generation length. Every ``--eval-every`` rollout batches, the
training clock is paused and the policy is measured on fixed holdout prompts with the gold reward
(``trl_extras.evaluation.measure_policy``): gold of ``--eval-samples`` answers per prompt at T=1 and of the greedy
answer. The trainers' runs are interleaved seed by seed (GRPO seed 0, PPO seed 0, GRPO seed 1, ...:
``benchmarks/interleave.py``, load average at start and end), so both see the same machine load.

Reported (``benchmarks/results/time_to_quality_<task>.json``, ``.md``, ``.png``): the curves; per trainer the final
gold (T=1, greedy) and training seconds, median (min-max) over seeds; and the goal of issue 23 - PPO's time to reach
GRPO's final gold (same seed; the first evaluation at or above it) over GRPO's wall time, paired per seed
("never" when PPO's curve stays below).

    python benchmarks/time_to_quality.py --task sort_hard --seeds 0 1 2                  # testbed, minutes
    python benchmarks/time_to_quality.py --task arithmetic --seeds 0 --rollouts 6        # SmolLM2 + LoRA, slow on CPU

Settings are flags (``--rollouts``, ``--batch``, ``--length``, ``--eval-prompts``...); the defaults are the recipes'
rollout batch and length with few rollouts, for a CPU. Only the training clock counts (trainer construction and the
evaluations are excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

sys.path.insert(0, str(Path(__file__).parent))
from interleave import load_text, run_interleaved, spread, write_result  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TRAINERS = ("grpo", "ppo")  # run order within a seed; GRPO is the baseline of the ratios
COMMON = dict(use_cpu=True, report_to="none", save_strategy="no", gradient_checkpointing=False,
              lr_scheduler_type="constant", logging_steps=1, disable_tqdm=True, gradient_accumulation_steps=1)

# Per task: the PPO recipe's settings and GRPO's (TRL's defaults + the recipe's learning rate and group size).
TASKS = {
    "sort_hard": {
        "batch": 32, "mini_batches": 2, "length": 24, "rollouts": 12, "temperature": 1.0, "eval_prompts": 128,
        "eval_samples": 4, "eval_every": 2, "dtype": "float32", "lora": False,
        # recipes/ppo_testbed.yaml
        "ppo": dict(num_ppo_epochs=2, learning_rate=5e-5, value_learning_rate=5e-4, kl_estimator="exact",
                    kl_coef=0.05, gamma=1.0, lam=0.95, cliprange=0.2, cliprange_value=0.2,
                    advantage_normalization="batch", missing_eos_penalty=1.0, value_model_init="policy",
                    max_prompt_length=64),
        # TRL 1.16 GRPO defaults (beta=0: no reference); lr and group size of recipes/grpo_exact_kl_testbed.yaml
        "grpo": dict(num_generations=8, learning_rate=3e-4, beta=0.0),
        "ppo_source": "recipes/ppo_testbed.yaml",
        "grpo_source": "TRL 1.16 GRPOConfig defaults; learning_rate and num_generations of "
                       "recipes/grpo_exact_kl_testbed.yaml",
    },
    "arithmetic": {
        "batch": 16, "mini_batches": 1, "length": 20, "rollouts": 6, "temperature": 0.7, "eval_prompts": 64,
        "eval_samples": 1, "eval_every": 2, "dtype": "bfloat16", "lora": True,
        # recipes/pipeline_smollm2.yaml's PPO stage (trl_extras/pipeline/stages.py), value model from the policy
        "ppo": dict(num_ppo_epochs=2, learning_rate=3e-4, kl_estimator="exact", kl_coef=0.02,
                    advantage_normalization="batch", value_model_init="policy", max_prompt_length=64),
        "grpo": dict(num_generations=4, learning_rate=3e-4, beta=0.0),
        "ppo_source": "recipes/pipeline_smollm2.yaml (ppo stage: 16 sequences per rollout, 2 epochs, lr 3e-4, "
                      "exact KL 0.02, T=0.7, LoRA r=16, bf16)",
        "grpo_source": "TRL 1.16 GRPOConfig defaults (beta=0); lr, T, LoRA and dtype of the SmolLM2 pipeline",
    },
}


def task_setup(task: str, args) -> dict:
    """Paths, datasets, gold reward and settings of ``task`` (the flags override the table's defaults)."""
    from trl_extras.testbed import task_module

    s = dict(TASKS[task])
    for key in ("batch", "length", "rollouts", "eval_prompts", "eval_samples", "eval_every"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    tb = task_module(task)
    if task == "arithmetic":
        from trl_extras.testbed.smollm2 import smollm2_path

        s["path"], s["what"] = smollm2_path(), "SmolLM2-135M-Instruct + LoRA r=16 (bf16 weights), arithmetic"
    else:
        s["path"], s["what"] = tb.sft_policy(seed=0, progress=True), "testbed sort_hard SFT policy (seed 0)"
    config = tb.TaskConfig(seed=0)
    s["data"] = tb.prompt_dataset("train", config)
    s["eval_prompts_list"] = list(tb.prompt_dataset("holdout", config)["prompt"])[: s["eval_prompts"]]
    s["gold"] = tb.gold_reward_fn
    # rollout batch = sequences sampled per rollout, the same for both trainers
    s["rollout_batch"] = s["batch"] * s["mini_batches"]
    if args.ppo_set:  # settings other than the recipe's, recorded in the result's meta and title
        overrides = parse_settings(args.ppo_set)
        s["ppo"] = {**s["ppo"], **overrides}
        s["ppo_source"] += f", with {overrides} (not the recipe)"
    return s


def parse_settings(items: list[str]) -> dict:
    """``["num_ppo_epochs=1", "learning_rate=2e-4", "whiten_rewards=true"]`` -> typed values (numbers before YAML,
    which reads ``2e-4`` as a string)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--ppo-set {item!r}: expected KEY=VALUE, e.g. num_ppo_epochs=1")
        try:
            out[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            out[key] = yaml.safe_load(value)
    return out


class QualityClock:
    """A TrainerCallback: the training clock (evaluations excluded) and the gold curve at rollout boundaries."""

    def __init__(self, setup: dict, steps_per_rollout: int, seed: int, time_budget: float | None):
        from transformers import TrainerCallback

        self.setup, self.steps_per_rollout, self.seed, self.time_budget = setup, steps_per_rollout, seed, time_budget
        self.curve: list[dict] = []
        self.trainer = None
        self._start = self._paused = 0.0
        clock = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                clock.evaluate(0, 0.0)  # the common SFT starting point, before the clock starts
                clock._start, clock._paused = time.perf_counter(), 0.0

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step % clock.steps_per_rollout:
                    return
                rollouts = state.global_step // clock.steps_per_rollout
                seconds = clock.seconds()
                out_of_time = clock.time_budget is not None and seconds >= clock.time_budget
                if rollouts % clock.setup["eval_every"] == 0 or out_of_time:
                    clock.evaluate(rollouts, seconds)
                if out_of_time:
                    control.should_training_stop = True

            def on_train_end(self, args, state, control, **kwargs):
                rollouts = state.global_step // clock.steps_per_rollout
                if clock.curve[-1]["rollouts"] != rollouts:
                    clock.evaluate(rollouts, clock.seconds())

        self.callback = Callback()

    def seconds(self) -> float:
        return time.perf_counter() - self._start - self._paused

    def evaluate(self, rollouts: int, seconds: float) -> None:
        from trl_extras.evaluation.measure import measure_policy

        start = time.perf_counter()
        trainer = self.trainer
        model = getattr(trainer, "policy", None) or trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        s, point = self.setup, {"rollouts": rollouts, "seconds": seconds}
        try:
            for name, temperature, n in (("gold_T1", 1.0, s["eval_samples"]), ("gold_greedy", 0.0, 1)):
                m = measure_policy(model, trainer.processing_class, s["eval_prompts_list"], {"gold": s["gold"]},
                                   max_new_tokens=s["length"], temperature=temperature, num_generations=n,
                                   batch_size=128, seed=1000 + self.seed)
                point[name] = m.mean("gold")
        finally:
            model.train(was_training)
        self.curve.append(point)
        self._paused += time.perf_counter() - start
        print(f"[time_to_quality] {type(trainer).__name__} seed {self.seed} rollouts {rollouts}: {seconds:.1f} s, "
              f"gold T=1 {point['gold_T1']:.3f}, greedy {point['gold_greedy']:.3f}", flush=True)


def build(trainer: str, setup: dict, seed: int, out: str):
    """The ``trainer`` ("ppo" or "grpo") for ``setup`` with ``seed``; returns (trainer, optimizer steps per rollout)."""
    s = setup
    common = dict(COMMON, output_dir=out, seed=seed, per_device_train_batch_size=s["batch"],
                  max_completion_length=s["length"], temperature=s["temperature"], bf16=False,
                  model_init_kwargs={"dtype": s["dtype"]})
    peft = None
    if s["lora"]:
        from peft import LoraConfig

        peft = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                          task_type="CAUSAL_LM")
    if trainer == "ppo":
        from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

        cfg = dict(s["ppo"])
        # PPO's minibatches may differ from GRPO's (--ppo-set num_mini_batches=1): the rollout batch stays the same
        mini_batches = cfg.pop("num_mini_batches", s["mini_batches"])
        if s["rollout_batch"] % mini_batches:
            raise ValueError(f"num_mini_batches={mini_batches} does not divide the rollout batch {s['rollout_batch']}")
        common["per_device_train_batch_size"] = s["rollout_batch"] // mini_batches
        steps = cfg["num_ppo_epochs"] * mini_batches
        args = PPOConfig(**common, **cfg, num_mini_batches=mini_batches, max_steps=s["rollouts"] * steps)
        return PPOTrainer(s["path"], reward_funcs=s["gold"], args=args, train_dataset=s["data"], peft_config=peft), steps
    from trl import GRPOConfig, GRPOTrainer

    steps = s["mini_batches"]  # GRPO: steps_per_generation micro-batches, one optimizer step each (num_iterations=1)
    args = GRPOConfig(**common, **s["grpo"], steps_per_generation=steps, max_steps=s["rollouts"] * steps)
    return GRPOTrainer(s["path"], reward_funcs=s["gold"], args=args, train_dataset=s["data"], peft_config=peft), steps


def one_run(trainer_name: str, setup: dict, seed: int, out: str, time_budget: float | None) -> dict:
    trainer, steps = build(trainer_name, setup, seed, out)
    clock = QualityClock(setup, steps, seed, time_budget)
    clock.trainer = trainer
    trainer.add_callback(clock.callback)
    trainer.train()
    final, first = clock.curve[-1], clock.curve[0]
    return {"seed": seed, "train_seconds": final["seconds"], "rollouts": final["rollouts"],
            "gold_T1_final": final["gold_T1"], "gold_greedy_final": final["gold_greedy"],
            "gold_T1_start": first["gold_T1"], "gold_greedy_start": first["gold_greedy"], "curve": clock.curve}


def time_to_reach(curve: list[dict], key: str, target: float) -> float | None:
    """Training seconds of the first point of ``curve`` whose ``key`` is >= ``target`` (None: never)."""
    return next((p["seconds"] for p in curve if p[key] >= target), None)


def goal_ratios(result: dict) -> dict:
    """Per seed: PPO's time to reach GRPO's final gold (same seed) / GRPO's training seconds, for T=1 and greedy
    (no ratio where GRPO ended at or below its start: reaching that is no goal)."""
    runs = {(r["variant"], r["metrics"]["seed"]): r["metrics"] for r in result["runs"]}
    out = {}
    for key in ("gold_T1", "gold_greedy"):
        rows = []
        for (variant, seed), grpo in sorted(runs.items()):
            if variant != "grpo" or ("ppo", seed) not in runs:
                continue
            ppo = runs[("ppo", seed)]
            gained = grpo[f"{key}_final"] > grpo["curve"][0][key]  # else the target is the start: no goal to time
            t = time_to_reach(ppo["curve"], key, grpo[f"{key}_final"]) if gained else None
            rows.append({"seed": seed, "grpo_final": grpo[f"{key}_final"], "grpo_seconds": grpo["train_seconds"],
                         "grpo_gained": gained, "ppo_seconds_to_reach": t,
                         "ratio": None if t is None else t / grpo["train_seconds"]})
        reached = [r["ratio"] for r in rows if r["ratio"] is not None]
        out[key] = {"per_seed": rows, "reached": f"{len(reached)}/{len(rows)}",
                    "ratio": spread(reached) if reached else None}
    return out


def write_outputs(result: dict, name: str) -> None:
    result["goal"] = goal_ratios(result)
    write_result(result, RESULTS / f"{name}.json")
    (RESULTS / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    try:
        plot(result, RESULTS / f"{name}.png")
    except ImportError as err:  # matplotlib is a project dependency; say so rather than fail the measurement
        print(f"[time_to_quality] no plot: {err}")


def markdown(result: dict) -> str:
    m, metrics = result["meta"], result["metrics"]
    lines = [
        f"# Time to quality: PPO vs TRL GRPO ({m['what']})",
        "",
        f"Seeds {m['seeds']}, interleaved seed by seed ({' '.join(result['order'])}); {load_text(result)}. "
        f"Rollout batch {m['rollout_batch']} sequences, max {m['length']} new tokens, sampling T={m['temperature']}, "
        f"{m['rollouts']} rollouts per run; gold on {m['eval_prompts']} holdout prompts every {m['eval_every']} "
        f"rollouts (T=1: {m['eval_samples']} answer(s) per prompt; greedy: one), evaluations off the clock. "
        f"PPO: {m['ppo_source']}: {m['ppo']}. GRPO: {m['grpo_source']}: {m['grpo']}. `{m['command']}`",
        "",
        "| trainer | gold T=1 start | gold T=1 final | gold greedy start | gold greedy final | training s |",
        "|---|---|---|---|---|---|",
    ]

    def cell(v: dict, fmt: str = ".3f") -> str:
        return f"{v['median']:{fmt}} ({v['min']:{fmt}}-{v['max']:{fmt}})"

    for t in TRAINERS:
        if t not in metrics:
            continue
        x = metrics[t]
        lines.append(f"| {t.upper()} | {cell(x['gold_T1_start'])} | {cell(x['gold_T1_final'])} | "
                     f"{cell(x['gold_greedy_start'])} | {cell(x['gold_greedy_final'])} | "
                     f"{cell(x['train_seconds'], '.0f')} |")
    paired = result["ratios"].get("ppo", {})
    if "train_seconds" in paired:
        names = {"train_seconds": "training seconds", "gold_T1_final": "final gold T=1",
                 "gold_greedy_final": "final gold greedy"}
        lines += ["", "PPO / GRPO, paired per seed, median (min-max): "
                  + "; ".join(f"{label} {cell(paired[k], '.2f')}" for k, label in names.items() if k in paired) + "."]
    lines += ["", "Median (min-max) over seeds. Goal (issue 23): PPO reaches GRPO's final gold in <= 1.0x GRPO's "
                  "training time (paired per seed):", "",
              "| gold | per seed: GRPO final, GRPO s, PPO s to reach it | ratio median (min-max) | reached |",
              "|---|---|---|---|"]
    for key, g in result["goal"].items():
        per = "; ".join(
            f"seed {r['seed']}: {r['grpo_final']:.3f}, {r['grpo_seconds']:.0f} s, "
            + ("GRPO gained nothing" if not r.get("grpo_gained", True) else "never"
               if r["ppo_seconds_to_reach"] is None else f"{r['ppo_seconds_to_reach']:.0f} s")
            for r in g["per_seed"])
        ratio = "–" if g["ratio"] is None else cell(g["ratio"], ".2f").replace(" (", "x (")
        lines.append(f"| {key.replace('gold_', '')} | {per} | {ratio} | {g['reached']} |")
    return "\n".join(lines) + "\n"


def summary(names: list[str]) -> str:
    """One row per result file (a PPO setting against GRPO, interleaved): what a user trades between settings."""
    lines = ["| PPO settings | seeds | PPO / GRPO training s | final gold T=1, PPO vs GRPO | final gold greedy, PPO vs "
             "GRPO | time to GRPO's final gold T=1 (reached) | greedy (reached) |", "|---|---|---|---|---|---|---|"]

    def cell(v: dict | None, fmt: str = ".2f", x: str = "") -> str:
        return "–" if v is None else f"{v['median']:{fmt}}{x} ({v['min']:{fmt}}-{v['max']:{fmt}})"

    for name in names:
        r = json.loads((RESULTS / f"{name}.json").read_text())
        m, x, paired, goal = r["meta"], r["metrics"], r["ratios"]["ppo"], r["goal"]
        recipe = TASKS[m["task"]]["ppo"]
        changed = {k: v for k, v in m["ppo"].items() if recipe.get(k) != v}
        if m["mini_batches"] != TASKS[m["task"]]["mini_batches"] and "num_mini_batches" not in changed:
            changed["num_mini_batches"] = m["mini_batches"]
        label = "recipe" if not changed else ", ".join(f"{k}={v}" for k, v in changed.items())
        lines.append(
            f"| {label} | {' '.join(map(str, m['seeds']))} | {cell(paired['train_seconds'], x='x')} | "
            f"{x['ppo']['gold_T1_final']['median']:.3f} vs {x['grpo']['gold_T1_final']['median']:.3f} | "
            f"{x['ppo']['gold_greedy_final']['median']:.3f} vs {x['grpo']['gold_greedy_final']['median']:.3f} | "
            f"{cell(goal['gold_T1']['ratio'], x='x')} ({goal['gold_T1']['reached']}) | "
            f"{cell(goal['gold_greedy']['ratio'], x='x')} ({goal['gold_greedy']['reached']}) |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    colors = {"ppo": "tab:blue", "grpo": "tab:orange"}
    for ax, key, title in zip(axes, ("gold_T1", "gold_greedy"), ("gold at T=1", "gold, greedy")):
        for run in result["runs"]:
            curve, v = run["metrics"]["curve"], run["variant"]
            label = f"{v.upper()}" if run["round"] == 0 else None
            ax.plot([p["seconds"] for p in curve], [p[key] for p in curve], marker="o", ms=3, alpha=0.8,
                    color=colors[v], label=label)
        ax.set_xlabel("training wall-clock s (evaluations excluded)")
        ax.set_ylabel(f"holdout {title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Time to quality, {result['meta']['what']} ({len(result['meta']['seeds'])} seeds, one line each)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=tuple(TASKS), default="sort_hard")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rollouts", type=int, help="rollout batches per run (default: the task's)")
    parser.add_argument("--batch", type=int, help="per-device batch (rollout batch = batch x the task's minibatches)")
    parser.add_argument("--length", type=int, help="max_completion_length")
    parser.add_argument("--eval-prompts", dest="eval_prompts", type=int, help="holdout prompts measured")
    parser.add_argument("--eval-samples", dest="eval_samples", type=int, help="answers per prompt at T=1")
    parser.add_argument("--eval-every", dest="eval_every", type=int, help="rollout batches between evaluations")
    parser.add_argument("--ppo-set", dest="ppo_set", nargs="+", metavar="KEY=VALUE",
                        help="PPOConfig settings instead of the recipe's (num_mini_batches included), e.g. "
                             "num_ppo_epochs=1 num_mini_batches=1 learning_rate=3e-4")
    parser.add_argument("--time-budget", type=float, help="stop a run once its training clock passes this (s)")
    parser.add_argument("--min-seeds", type=int, default=3, help=argparse.SUPPRESS)  # 1 only for a smoke run
    parser.add_argument("--out", help="result name (default time_to_quality_<task>)")
    parser.add_argument("--render-only", action="store_true", help="rewrite .md and .png from the existing .json")
    parser.add_argument("--summary", nargs="+", metavar="NAME",
                        help="write <--out>.md: one row per result NAME (PPO settings side by side), then exit")
    args = parser.parse_args(argv)
    if args.summary:
        if not args.out:
            parser.error("--summary needs --out (the table's name under benchmarks/results)")
        (RESULTS / f"{args.out}.md").write_text(table := summary(args.summary))
        return print(table)
    name = args.out or f"time_to_quality_{args.task}"
    if args.render_only:
        return write_outputs(json.loads((RESULTS / f"{name}.json").read_text()), name)
    for flag in ("rollouts", "batch", "length", "eval_prompts", "eval_samples", "eval_every"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} {value}: must be >= 1")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {args.seeds}: give distinct seeds")

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    setup = task_setup(args.task, args)
    iter_seeds = {t: iter(args.seeds) for t in TRAINERS}
    budget = args.time_budget
    with tempfile.TemporaryDirectory() as tmp:
        def variant(t):
            return lambda: (lambda seed: one_run(t, setup, seed, os.path.join(tmp, f"{t}{seed}"), budget))(
                next(iter_seeds[t]))

        meta = {"what": setup["what"], "task": args.task, "seeds": args.seeds, "rollout_batch": setup["rollout_batch"],
                "batch": setup["batch"], "mini_batches": setup["mini_batches"], "length": setup["length"],
                "temperature": setup["temperature"], "rollouts": setup["rollouts"], "time_budget_s": budget,
                "eval_prompts": len(setup["eval_prompts_list"]), "eval_samples": setup["eval_samples"],
                "eval_every": setup["eval_every"], "dtype": setup["dtype"], "lora": setup["lora"],
                "ppo": setup["ppo"], "grpo": setup["grpo"], "ppo_source": setup["ppo_source"],
                "grpo_source": setup["grpo_source"], "threads": torch.get_num_threads(),
                "command": "python benchmarks/time_to_quality.py " + " ".join(sys.argv[1:] if argv is None else argv)}
        result = run_interleaved({t: variant(t) for t in TRAINERS}, rounds=len(args.seeds), min_rounds=args.min_seeds,
                                 meta=meta)
    write_outputs(result, name)
    return result


if __name__ == "__main__":
    main()

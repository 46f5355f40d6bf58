"""CEM over rounds with and without diversity controls, over seeds (issue 13, item 5).

The article: "In theory, you can do several consecutive iterations of this approach [...] In practice, however,
it wouldn't work very well, because after the first iteration, the model loses much of the original variation in
responses, so selecting the best answer no longer helps." This study measures that on the ``sort_hard`` task, whose
SFT policy's greedy answer is its demonstrators' systematic wrong mode while samples sometimes leave it (headroom
that needs exploration: ``benchmarks/testbed_headroom.py``).

Configs (all else equal; values in ``CONFIGS``, reasons in ``CONFIG_NOTES``): plain CEM (best-of-N fine-tuning, no
control) and each control of :class:`~trl_extras.trainers.cem.config.CEMConfig` alone: SFT replay
(``sft_mix_ratio``), KL to the initial model (``kl_coef``), entropy bonus (``entropy_coef``), rising sampling
temperature (``temperature_end``).

What CEM optimizes: ``--reward gold`` (default) selects elites by the task's gold reward itself, so the only question
is exploration collapse (no proxy error); ``--reward proxy`` selects by the biased ``heuristic_reward_fn`` while gold
is tracked. Per round r (r=0: the article's SFT policy; r>=1: after round r's fine-tuning), on the article's holdout
prompts: gold at T=1 (the trainer's own evaluation: ``eval_num_generations`` samples per prompt) with its token
entropy, distinct-1/2 and share of distinct answers per prompt; gold of the greedy answer
(:func:`~trl_extras.evaluation.measure.measure_policy`, temperature 0, on the round's saved model). Every seed has
its own SFT policy (``task_module(task).sft_policy(seed)``), prompts and sampling streams; tables give the mean and
95% t-interval over seeds (``trl_extras.core.stats.mean_ci``).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/cem_rounds.py --seeds 0 1 2 3 4     # 25 runs of 1-2 min
    .venv/bin/python benchmarks/cem_rounds.py --quick                                               # smoke run
    .venv/bin/python benchmarks/cem_rounds.py --seeds 0 1 2 3 4 --report-only     # re-summarize the saved runs

Each (config, seed) run writes ``benchmarks/results/cem_rounds/<reward>/<config>_seed<k>.json`` when it finishes
and is skipped on a rerun with the same settings; the summary is ``benchmarks/results/cem_rounds[_proxy].{json,md,
png}`` (``_quick`` added for ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

RESULTS = Path(__file__).parent / "results"

#: One value per control, each alone (the CEMConfig fields they set).
CONFIGS = {
    "plain": {},
    "sft_replay": {"sft_mix_ratio": 0.5},
    "kl": {"kl_coef": 0.2},
    "entropy": {"entropy_coef": 0.1},
    "temp_schedule": {"temperature_end": 1.5},
}

#: Why each value (written into the Markdown).
CONFIG_NOTES = {
    "plain": "the article's loop: sample N, keep the best answer per prompt (deduplicated), fine-tune; no control.",
    "sft_replay": "one replayed SFT row per two elites: a third of each round's fine-tuning rows come from the "
                  "corpus the policy was trained on (the same rows, `sft_dataset(8000, seed=seed+11)`), enough to "
                  "hold its spread of answers without drowning the elites. On sort_hard that corpus carries the "
                  "wrong mode (70% of its demonstrators), so replay also pulls back towards the mode.",
    "kl": "exact per-token KL(π‖π_SFT) on completion tokens at weight 0.2: the per-round optimum of CE + β·KL is "
          "the geometric mix π ∝ π_elite^(1/(1+β))·π_SFT^(β/(1+β)), so 0.2 keeps ~1/6 of the SFT distribution's "
          "log-weight each round: a brake, not a wall (1.0 would halve every round's step).",
    "entropy": "entropy bonus 0.1 per token: CE per token on elites is ~0.3-1 nats and the SFT policy's token entropy "
               "~0.4 nats, so the bonus is a tenth of the loss scale, enough to resist the halving of entropy per "
               "round seen without control, small enough not to reward noise answers.",
    "temp_schedule": "sampling temperature 1.0 → 1.5 linearly over the rounds (1.0, 1.17, 1.33, 1.5 for 4): "
                     "rising T re-spreads the samples of a sharpened policy; holdout evaluation stays at T=1.",
}

#: Per-round holdout measures: (key in the run JSON, trainer eval key, label).
HOLDOUT = [
    ("gold_t1", "eval_gold_mean", "gold T=1"),
    ("entropy", "eval_entropy", "entropy"),
    ("distinct_1", "eval_distinct_1", "dist-1"),
    ("distinct_2", "eval_distinct_2", "dist-2"),
    ("unique_fraction", "eval_unique_fraction", "uniq"),
    ("reward_t1", "eval_reward_mean", "optimized T=1"),
]
#: Per-round measures of the round's own samples (train prompts, before its fine-tuning).
SAMPLES = [
    ("gold_mean", "sample gold"),
    ("best_of_n_gold_mean", "best-of-N gold"),
    ("entropy", "sample entropy"),
    ("unique_fraction", "sample uniq"),
]


# ---------------------------------------------------------------------------------------------- one run
def run_settings(a) -> dict:
    """What shapes one (config, seed) run's numbers: a saved run is reused only when these match."""
    keys = ("task", "reward", "rounds", "n", "prompts", "eval_prompts", "eval_n", "lr", "epochs", "batch_size",
            "max_new_tokens")
    return {k: getattr(a, k) for k in keys}


def greedy_gold(path: str, prompts: list, gold_fn, max_new_tokens: int) -> dict:
    """Gold of the greedy answer of the model at ``path`` on ``prompts``: mean, 95% CI over prompts, per prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_extras.core.stats import mean_ci
    from trl_extras.evaluation.measure import measure_policy

    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    out = measure_policy(model, tokenizer, prompts, {"gold": gold_fn}, max_new_tokens=max_new_tokens,
                         temperature=0, batch_size=256)
    values = out.rewards["gold"]
    mean, low, high = mean_ci(values)
    return {"mean": mean, "ci": [low, high], "per_prompt": [round(v, 4) for v in values]}


def run_one(name: str, seed: int, a, workdir: Path) -> dict:
    """One CEM run of config ``name`` from seed ``seed``'s SFT policy; per-round holdout measures."""
    from trl_extras.testbed import task_module
    from trl_extras.trainers.cem import CEMConfig, CEMTrainer

    tb = task_module(a.task)
    policy = tb.sft_policy(seed, progress=False)
    task_config = tb.TaskConfig(seed=seed)
    train = tb.prompt_dataset("train", task_config)
    holdout = tb.prompt_dataset("holdout", task_config)
    holdout = holdout.select(range(min(a.eval_prompts, len(holdout))))
    optimized = tb.gold_reward_fn if a.reward == "gold" else tb.heuristic_reward_fn
    args = CEMConfig(
        output_dir=str(workdir), num_rounds=a.rounds, num_generations=a.n, prompts_per_round=a.prompts,
        max_completion_length=a.max_new_tokens, generation_chunk_size=256, temperature=1.0, elite_top_k=1,
        dedupe=True, learning_rate=a.lr, num_train_epochs=a.epochs, per_device_train_batch_size=a.batch_size,
        lr_scheduler_type="constant", eval_num_generations=a.eval_n, use_cpu=True, bf16=False, report_to="none",
        save_strategy="no", gradient_checkpointing=False, logging_steps=10, disable_tqdm=True, seed=seed,
        resume=True, plot=False, **CONFIGS[name],
    )
    sft_rows = tb.sft_dataset(8000, task_config, seed=seed + 11)  # the corpus the SFT policy was built on
    t0 = time.perf_counter()
    trainer = CEMTrainer(policy, optimized, args, train_dataset=train, eval_dataset=holdout, sft_dataset=sft_rows,
                         eval_reward_funcs=tb.gold_reward_fn)
    history = trainer.train()
    train_s = time.perf_counter() - t0
    evals = [trainer.initial_eval] + history
    paths = [policy] + [str(trainer.round_dir(r) / "model") for r in range(len(history))]
    prompts = list(holdout["prompt"])
    rounds = []
    for r, (ev, path) in enumerate(zip(evals, paths)):
        row = {"round": r, **{key: ev[src] for key, src, _ in HOLDOUT}}
        greedy = greedy_gold(path, prompts, tb.gold_reward_fn, a.max_new_tokens)
        row["gold_greedy"], row["gold_greedy_ci"] = greedy["mean"], greedy["ci"]
        row["gold_greedy_per_prompt"] = greedy["per_prompt"]
        if r >= 1:  # the samples round r-1 selected from (train prompts, before its fine-tuning)
            h = history[r - 1]
            row["samples"] = {key: h[key] for key, _ in SAMPLES if key in h}
            row["samples"]["temperature"] = h["temperature"]
            row["samples"]["elite_gold_mean"] = h.get("elite_gold_mean")
            for key in ("kl_to_ref", "entropy_bonus", "train_loss", "fine_tune_rows", "sft_mix_rows"):
                if key in h:
                    row["samples"][key] = h[key]
        rounds.append(row)
    return {"config": name, "overrides": CONFIGS[name], "seed": seed, "settings": run_settings(a),
            "policy": policy, "rounds": rounds, "train_seconds": train_s,
            "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------- statistics
def ci(values: list[float]) -> tuple[float, float, float]:
    """``(mean, low, high)`` over seeds (95% t-interval); NaN bounds with a single seed."""
    from trl_extras.core.stats import mean_ci

    if len(values) < 2:
        return (float(values[0]) if values else float("nan")), float("nan"), float("nan")
    return mean_ci(values)


def rising_verdict(curves: list[list[float]], through: int = 3) -> dict:
    """Whether gold "keeps rising" through round ``through``, from per-seed curves ``curves[seed][round]``
    (round 0 = the SFT policy).

    * ``deltas[r-1]``: mean and CI over seeds of ``g_r - g_{r-1}``, r = 1..R; ``rises[r-1]``: its mean is > 0.
    * ``gain``: ``g_through - g_0``; ``late_gain``: ``g_through - g_1`` (what the rounds after the first add: the
      part plain CEM is said to lack).
    * ``keeps_rising``: every round 1..``through`` rises on average AND the late gain's 95% CI over seeds is above 0.
    * ``stalls``: the late gain's CI is not above 0 (``None`` when there is no CI: fewer than 2 seeds).
    """
    num_rounds = min(len(c) for c in curves) - 1
    if num_rounds < through:
        raise ValueError(f"rising_verdict(through={through}) needs curves with >= {through + 1} points, "
                         f"got {num_rounds + 1}")
    deltas = [ci([c[r] - c[r - 1] for c in curves]) for r in range(1, num_rounds + 1)]
    rises = [d[0] > 0 for d in deltas]
    gain = ci([c[through] - c[0] for c in curves])
    late = ci([c[through] - c[1] for c in curves])
    significant = None if math.isnan(late[1]) else late[1] > 0
    return {
        "deltas": deltas, "rises": rises, "gain": gain, "late_gain": late,
        "keeps_rising": None if significant is None else bool(all(rises[:through]) and significant),
        "stalls": None if significant is None else not significant,
    }


def summarize(runs: list[dict], through: int = 3) -> dict:
    """Per config: per round mean/CI over seeds of every measure, the rising verdicts (T=1 and greedy), and the
    paired difference to plain CEM at round ``through`` and at the last round."""
    by_config: dict[str, list[dict]] = {}
    for run in runs:
        by_config.setdefault(run["config"], []).append(run)
    out = {}
    for name, group in by_config.items():
        group = sorted(group, key=lambda r: r["seed"])
        num_rounds = min(len(r["rounds"]) for r in group)
        per_round = []
        for r in range(num_rounds):
            row = {"round": r}
            for key in [k for k, _, _ in HOLDOUT] + ["gold_greedy"]:
                row[key] = ci([run["rounds"][r][key] for run in group])
            if r >= 1:
                for key, _ in SAMPLES:
                    values = [run["rounds"][r]["samples"].get(key) for run in group]
                    if all(isinstance(v, (int, float)) for v in values):
                        row[f"samples_{key}"] = ci(values)
                samples = [run["rounds"][r]["samples"] for run in group]
                if all("best_of_n_gold_mean" in x and "gold_mean" in x for x in samples):
                    row["samples_headroom"] = ci([x["best_of_n_gold_mean"] - x["gold_mean"] for x in samples])
            per_round.append(row)
        entry = {"seeds": [r["seed"] for r in group], "overrides": group[0]["overrides"], "per_round": per_round,
                 "seconds": sum(r["seconds"] for r in group)}
        if num_rounds - 1 >= through:
            for key in ("gold_t1", "gold_greedy"):
                entry[f"verdict_{key}"] = rising_verdict([[x[key] for x in r["rounds"]] for r in group], through)
        out[name] = entry
    plain = {r["seed"]: r for r in by_config.get("plain", [])}
    for name, entry in out.items():
        if name == "plain" or not plain:
            continue
        paired = [(run, plain[run["seed"]]) for run in by_config[name] if run["seed"] in plain]
        if not paired:
            continue
        last = min(min(len(run["rounds"]), len(base["rounds"])) for run, base in paired) - 1
        entry["vs_plain_last_round"] = last
        for key in ("gold_t1", "gold_greedy", "entropy"):
            for label, r in (("through", through), ("last", last)):
                if r <= last:
                    entry[f"vs_plain_{key}_{label}"] = ci([run["rounds"][r][key] - base["rounds"][r][key]
                                                           for run, base in paired])
    return out


# ---------------------------------------------------------------------------------------------- report
def _fmt(t, digits: int = 3, signed: bool = False) -> str:
    mean, low, high = t
    sign = "+" if signed else ""
    if math.isnan(low):
        return f"{mean:{sign}.{digits}f}"
    return f"{mean:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def _yes(value) -> str:
    return "n/a (1 seed)" if value is None else ("**yes**" if value else "no")


def to_markdown(result: dict) -> str:
    s = result["settings"]
    summary = result["summary"]
    through = result["through"]
    optimized = ("the task's gold reward itself (`gold_reward_fn`): no proxy error, the question is exploration "
                 "collapse alone" if s["reward"] == "gold" else
                 "the biased proxy `heuristic_reward_fn` (gold tracked, never optimized)")
    seeds = sorted({seed for e in summary.values() for seed in e["seeds"]})
    lines = [
        f"# CEM over rounds, with and without diversity controls ({s['task']}, issue 13 item 5)", "",
        f"`{result['command']}`", "",
        f"Optimized: {optimized}. Seeds {seeds}: each seed has its own SFT policy, prompts and sampling streams. "
        f"Per round: {s['prompts']} train prompts × {s['n']} samples at the round's temperature, the best answer per "
        f"prompt (deduplicated) is an elite, fine-tuning {s['epochs']:g} epochs at lr {s['lr']:g} (batch "
        f"{s['batch_size']}). Holdout: {s['eval_prompts']} prompts; *gold T=1* and the diversity columns come from "
        f"{s['eval_n']} samples per prompt at T=1 (the trainer's evaluation), *gold greedy* from the greedy answer "
        "(`measure_policy`, temperature 0). Round 0 is the SFT policy; round r is after r rounds. Cells: mean "
        "[95% t-interval over seeds]. Entropy: the policy's mean token entropy (nats) on its T=1 holdout samples; "
        "dist-n: distinct-n of the samples of one prompt, averaged; uniq: distinct answers / samples per prompt.", "",
        "## Configs", "", "| config | setting | why this value |", "|---|---|---|",
    ]
    for name in summary:
        setting = ", ".join(f"`{k}={v}`" for k, v in CONFIGS.get(name, {}).items()) or "—"
        lines.append(f"| {name} | {setting} | {CONFIG_NOTES.get(name, '')} |")
    lines += ["", "## Holdout per round", "",
              "| config | round | gold T=1 | gold greedy | entropy | dist-1 | dist-2 | uniq |",
              "|---|---:|---|---|---|---|---|---|"]
    for name, e in summary.items():
        for row in e["per_round"]:
            cells = [_fmt(row[k]) for k in ("gold_t1", "gold_greedy", "entropy", "distinct_1", "distinct_2",
                                            "unique_fraction")]
            lines.append(f"| {name} | {row['round']} | " + " | ".join(cells) + " |")
    lines += ["", "## The round's own samples (train prompts, what selection chose from)", "",
              "Round r's samples come from the model after r−1 rounds (temperature of the schedule). *best-of-N gold* − "
              "*sample gold* is what selection can still gain: it shrinks as the samples collapse.", "",
              "| config | round | " + " | ".join(label for _, label in SAMPLES) + " |",
              "|---|---:|" + "---|" * len(SAMPLES)]
    for name, e in summary.items():
        for row in e["per_round"][1:]:
            cells = [_fmt(row[f"samples_{k}"]) if f"samples_{k}" in row else "" for k, _ in SAMPLES]
            lines.append(f"| {name} | {row['round']} | " + " | ".join(cells) + " |")

    lines += ["", "## The goal: \"with a control, gold keeps rising for >= 3 rounds where plain CEM stalls\"", "",
              f"Definitions (g_r = holdout gold after round r, g_0 = SFT policy; per seed, then mean and 95% CI over "
              f"seeds). **Rises in round r**: mean of g_r − g_(r−1) > 0. **Keeps rising for {through} rounds**: it "
              f"rises in each of rounds 1..{through} AND the late gain g_{through} − g_1 (what the rounds after the "
              f"first add) has its 95% CI above 0. **Stalls**: that late-gain CI is not above 0. The goal holds for a "
              f"control when the control keeps rising and plain CEM stalls, at that decoding.", ""]
    for key, label in (("gold_t1", "T=1"), ("gold_greedy", "greedy")):
        lines += [f"### Gold at {label}", "",
                  "| config | Δ per round (r=1..R) | rises | gain g_" + f"{through} − g_0 | late gain g_{through} − g_1 | "
                  f"vs plain at r={through} (paired) | keeps rising | stalls |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, e in summary.items():
            v = e.get(f"verdict_{key}")
            if v is None:
                continue
            deltas = ", ".join(f"{d[0]:+.3f}" for d in v["deltas"])
            rises = "".join("↑" if x else "↓" for x in v["rises"])
            vs = e.get(f"vs_plain_{key}_through")
            lines.append(f"| {name} | {deltas} | {rises} | {_fmt(v['gain'], signed=True)} | "
                         f"{_fmt(v['late_gain'], signed=True)} | {_fmt(vs, signed=True) if vs else '—'} | "
                         f"{_yes(v['keeps_rising'])} | {_yes(v['stalls'])} |")
        lines.append("")
    lines += ["### Verdict per control", ""]
    lines += verdict_lines(summary, through)
    lines += ["", "### Where the gain comes from, and what diversity is left", "",
              "Share of the whole R-round gold gain made in round 1; the holdout entropy and distinct answers per "
              "prompt at round 0 and round R; the selection headroom of the last round's own samples (gold of the best-of-N "
              "answer, picked by the optimized reward, − mean sample gold: what one more round of selection could "
              "still take; 0 once the samples collapse, negative when the proxy picks worse than average).",
              "", "| config | round-1 share of gain, T=1 | round-1 share, greedy | entropy r0 → rR | uniq r0 → rR | "
              "headroom at round R |", "|---|---|---|---|---|---|"]
    for name, e in summary.items():
        pr = e["per_round"]
        if len(pr) < 2:
            continue
        shares = []
        for key in ("gold_t1", "gold_greedy"):
            total = pr[-1][key][0] - pr[0][key][0]
            shares.append(f"{(pr[1][key][0] - pr[0][key][0]) / total:.0%}" if abs(total) > 1e-9 else "—")
        last = pr[-1]
        headroom = _fmt(last["samples_headroom"]) if "samples_headroom" in last else ""
        lines.append(f"| {name} | {shares[0]} | {shares[1]} | {pr[0]['entropy'][0]:.3f} → {last['entropy'][0]:.3f} | "
                     f"{pr[0]['unique_fraction'][0]:.3f} → {last['unique_fraction'][0]:.3f} | {headroom} |")
    lines += ["", "Paired difference to plain CEM at the last round (same seed: same SFT policy and prompts):", "",
              "| config | round | Δ gold T=1 | Δ gold greedy | Δ entropy |", "|---|---:|---|---|---|"]
    for name, e in summary.items():
        if "vs_plain_gold_t1_last" in e:
            lines.append(f"| {name} | {e['vs_plain_last_round']} | {_fmt(e['vs_plain_gold_t1_last'], signed=True)} | "
                         f"{_fmt(e['vs_plain_gold_greedy_last'], signed=True)} | "
                         f"{_fmt(e['vs_plain_entropy_last'], signed=True)} |")
    total = sum(e["seconds"] for e in summary.values())
    lines += ["", f"Compute: {total:.0f} s over {sum(len(e['seeds']) for e in summary.values())} runs "
              "(one process, OMP_NUM_THREADS=1, shared 2-core machine).", "",
              f"![CEM rounds]({result['plot']})", ""]
    return "\n".join(lines)


def verdict_lines(summary: dict, through: int = 3) -> list[str]:
    """One plain sentence per control and decoding: did the goal hold? Then one line over all controls."""
    plain = summary.get("plain", {})
    out = []
    held: dict[str, list[str]] = {}
    for key, label in (("gold_t1", "T=1"), ("gold_greedy", "greedy")):
        pv = plain.get(f"verdict_{key}")
        if pv is None:
            out.append(f"- {label}: no plain-CEM verdict (needs plain and >= 2 seeds).")
            continue
        plain_state = ("stalls" if pv["stalls"] else "does not stall") if pv["stalls"] is not None else "n/a"
        for name, e in summary.items():
            if name == "plain" or f"verdict_{key}" not in e:
                continue
            v = e[f"verdict_{key}"]
            ok = below = False
            if v["keeps_rising"] is None or pv["stalls"] is None:
                held_text = "not decidable with one seed"
            else:
                ok = bool(v["keeps_rising"] and pv["stalls"])
                held.setdefault(label, [])
                if ok:
                    held[label].append(name)
                held_text = "**held**" if ok else "**not held**"
            state = {None: "n/a", True: "keeps rising", False: "does not keep rising"}[v["keeps_rising"]]
            why = (f"{name} {state} "
                   f"(late gain {_fmt(v['late_gain'], signed=True)}), plain CEM {plain_state} "
                   f"(late gain {_fmt(pv['late_gain'], signed=True)})")
            vs = [(r, e.get(f"vs_plain_{key}_{tag}")) for r, tag in ((f"r={through}", "through"),
                                                                             ("the last round", "last"))]
            vs = [(r, t) for r, t in vs if t is not None and not math.isnan(t[1])]
            if vs:
                below = all(t[2] < 0 for _, t in vs)
                above = all(t[1] > 0 for _, t in vs)
                where = " and ".join(f"{r} {_fmt(t, signed=True)}" for r, t in vs)
                why += ("; it stays *below* plain CEM (paired: " + where + ")" + (
                        ", so it rises longer because its first rounds gain less, not because it goes further"
                        if ok else "")) if below else (
                        "; and it ends *above* plain CEM (paired: " + where + ")") if above else (
                        "; vs plain CEM (paired): " + where)
                if ok and below:
                    held[label][-1] += " (by the letter only: it stays below plain CEM)"
            out.append(f"- {label}, {name}: {held_text}: {why}.")
    for label, names in held.items():
        out.append(f"- **Overall at {label}: the goal held for {', '.join(names) if names else 'no control'}.**")
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("gold_t1", "holdout gold, T=1"), ("gold_greedy", "holdout gold, greedy"),
              ("entropy", "token entropy (nats), T=1 samples"), ("unique_fraction", "distinct answers per prompt")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4))
    for i, (name, e) in enumerate(result["summary"].items()):
        color = f"C{i}"
        x = [row["round"] for row in e["per_round"]]
        for ax, (key, title) in zip(axes, panels):
            mean = [row[key][0] for row in e["per_round"]]
            ax.plot(x, mean, "o-", color=color, label=name, ms=3)
            lo = [row[key][1] for row in e["per_round"]]
            if not any(math.isnan(v) for v in lo):
                ax.fill_between(x, lo, [row[key][2] for row in e["per_round"]], color=color, alpha=0.12)
            ax.set_title(title, fontsize=10)
    for ax in axes:
        ax.set_xlabel("round (0 = SFT policy)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    s = result["settings"]
    fig.suptitle(f"CEM rounds on {s['task']}, optimizing {s['reward']}: mean ± 95% CI over seeds "
                 f"{sorted({sd for e in result['summary'].values() for sd in e['seeds']})}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="sort_hard")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--reward", choices=["gold", "proxy"], default="gold",
                   help="what selects the elites: gold itself, or the biased heuristic proxy (gold is always tracked)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--n", type=int, default=8, help="samples per prompt per round")
    p.add_argument("--prompts", type=int, default=64, help="train prompts per round")
    p.add_argument("--eval-prompts", type=int, default=256)
    p.add_argument("--eval-n", type=int, default=4, help="T=1 samples per holdout prompt")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--through", type=int, default=3, help="the goal's 'keeps rising for >= this many rounds'")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    p.add_argument("--report-only", action="store_true",
                   help="only summarize the saved runs of these settings (runs not saved yet are left out)")
    p.add_argument("--workdir", default=None, help="where round models live while a run is going (default: tmp)")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.prompts, a.eval_prompts, a.n, a.eval_n, a.through = 3, 8, 16, 4, 2, 2
    if a.rounds < a.through:
        p.error(f"--rounds {a.rounds} < --through {a.through}: the goal needs that many rounds")

    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()

    out = Path(a.out)
    suffix = ("_proxy" if a.reward == "proxy" else "") + ("_quick" if a.quick else "")
    if a.task != "sort_hard":
        suffix = f"_{a.task}{suffix}"
    run_dir = out / f"cem_rounds{suffix}"
    run_dir.mkdir(parents=True, exist_ok=True)
    import tempfile

    work = Path(a.workdir) if a.workdir else Path(tempfile.gettempdir()) / f"cem_rounds_work{suffix}"
    settings = run_settings(a)
    runs = []
    for seed in a.seeds:
        for name in a.configs:
            path = run_dir / f"{name}_seed{seed}.json"
            if path.exists():
                saved = json.loads(path.read_text())
                if saved.get("settings") == settings and saved.get("overrides") == CONFIGS[name]:
                    print(f"== {name} seed {seed}: done before ({path})", flush=True)
                    runs.append(saved)
                    continue
                print(f"== {name} seed {seed}: saved run has other settings; rerunning", flush=True)
            if a.report_only:
                print(f"== {name} seed {seed}: not run (--report-only)", flush=True)
                continue
            print(f"== {name} seed {seed}", flush=True)
            wd = work / f"{name}_seed{seed}"
            if wd.exists():  # a run cut short: the trainer resumes only under the same settings
                marker = wd / "study_settings.json"
                if not marker.exists() or json.loads(marker.read_text()) != {**settings, **CONFIGS[name]}:
                    shutil.rmtree(wd)
            wd.mkdir(parents=True, exist_ok=True)
            (wd / "study_settings.json").write_text(json.dumps({**settings, **CONFIGS[name]}))
            run = run_one(name, seed, a, wd)
            path.write_text(json.dumps(run, indent=1))
            shutil.rmtree(wd, ignore_errors=True)
            print(f"   {run['seconds']:.0f} s; gold T=1 " + " ".join(f"{r['gold_t1']:.3f}" for r in run["rounds"])
                  + "; greedy " + " ".join(f"{r['gold_greedy']:.3f}" for r in run["rounds"]), flush=True)
            runs.append(run)
    stem = f"cem_rounds{suffix}"
    command = "python benchmarks/cem_rounds.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    result = {"command": command.strip(), "settings": settings, "through": a.through, "configs": CONFIGS,
              "plot": f"{stem}.png", "summary": summarize(runs, a.through),
              "runs": [{k: v for k, v in r.items() if k != "rounds"} | {"rounds": [
                  {k: v for k, v in row.items() if k != "gold_greedy_per_prompt"} for row in r["rounds"]]}
                  for r in runs]}
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    plot(result, out / f"{stem}.png")
    (out / f"{stem}.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return result


if __name__ == "__main__":
    main()

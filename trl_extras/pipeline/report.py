"""The pipeline's report: a terminal table, a Markdown report and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from .evaluate import fmt

#: Labels of results written before evaluation rows carried their own ``method`` label (rows keyed by stage).
METHOD_LABELS = {"pretrained": "pretrained", "sft": "SFT (reward ES)", "cem": "CEM", "ppo": "PPO", "ppo_refresh": "PPO (refreshed RM)", "dpo": "DPO"}


def _label(row: dict) -> str:
    return METHOD_LABELS.get(row["method"], row["method"])


def _ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "–"


def rate_with_count(rate, n) -> str:
    """``"0.812 (n=200, 95% CI [0.752, 0.860])"``: a proportion with its count and Wilson interval (``"–"`` when
    unknown); a rate on 2 pairs shows how little it says."""
    if rate is None:
        return "–"
    if not n:
        return f"{fmt(rate)} (n unknown)"
    from ..core.stats import win_rate_interval

    n = int(n)
    low, high = win_rate_interval(int(round(float(rate) * n)), n)
    return f"{fmt(rate)} (n={n}, 95% CI [{low:.3f}, {high:.3f}])"


def reward_model_cells(m: dict) -> str:
    """The reward-model row's cells: accuracy vs gold, hardest quartile (each with n and CI), ECE with n. Results
    written before the counts were stored fall back to ``num_pairs`` (and a quarter of it for the quartile)."""
    import math

    gold = "gold_accuracy" in m
    n = m.get("num_gold_pairs", m.get("num_pairs")) if gold else m.get("num_pairs")
    hard_n = m.get("num_hard_pairs", math.ceil(0.25 * n) if n else None)
    ece = m.get("gold_ece", m.get("ece"))
    ece_cell = f"{fmt(ece)} (n={int(n)})" if ece is not None and n else fmt(ece) if ece is not None else "–"
    return " | ".join([rate_with_count(m.get("gold_accuracy", m.get("accuracy")), n),
                       rate_with_count(m.get("hard_quartile_gold_accuracy"), hard_n), ece_cell])  # fmt: skip


def table_lines(rows: list[dict]) -> list[str]:
    """A fixed-width table: gold at the sampling temperature (95% CI) and greedy (95% CI), proxy, dirty RM, KL to
    SFT, length, and the side-by-side win rate vs SFT with its p-value, sampled and greedy."""
    width = max([16, *(len(_label(r)) for r in rows)])
    header = (f"{'method':<{width}} {'gold':>6} {'gold 95% CI':>15} {'greedy':>6} {'greedy 95% CI':>15} {'proxy':>7} "
              f"{'dirty RM':>8} {'KL(π‖SFT)':>9} {'len':>5} {'win vs SFT':>10} {'p-value':>9} {'win greedy':>10} "
              f"{'p greedy':>9}")
    lines = [header, "-" * len(header)]
    for r in rows:
        base = r.get("stage", r["method"]) == "sft"
        cells = []
        for suffix in ("", "_greedy"):
            win, p = r.get(f"win_rate{suffix}"), r.get(f"p_value{suffix}")
            cells.append((fmt(win) if win is not None else "(base)" if base else "–", f"{p:.1e}" if p is not None else "–"))
        lines.append(
            f"{_label(r):<{width}} {fmt(r.get('gold')):>6} {_ci(r.get('gold_ci')):>15} {fmt(r.get('gold_greedy')):>6} "
            f"{_ci(r.get('gold_ci_greedy')):>15} {fmt(r.get('proxy')):>7} {fmt(r.get('dirty_rm')):>8} "
            f"{fmt(r.get('kl_to_sft')):>9} {r.get('length', 0):>5.1f} {cells[0][0]:>10} {cells[0][1]:>9} "
            f"{cells[1][0]:>10} {cells[1][1]:>9}"
        )
    return lines


def make_plots(results: dict, out: Path) -> list[str]:
    """PNG plots: gold/proxy vs KL per method, CEM rounds, reward-model accuracies. Returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    table = results.get("evaluate", {}).get("table", [])
    # 1. gold and proxy reward against KL to the SFT model
    if table:
        # Methods often sit close together (several PPO variants at similar KL): text beside each point overlapped.
        # Each method gets its own colour and marker, named once in a legend under both panels.
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        markers = "osD^vP*Xh<>p"
        style = {i: dict(color=plt.get_cmap("tab10")(i % 10), marker=markers[i % len(markers)]) for i in range(len(table))}
        for ax, key, title in ((axes[0], "gold", "gold reward (truth)"), (axes[1], "proxy", "proxy reward (ensemble, penalized)")):
            traj = results.get("ppo", {}).get("trajectory") or []
            if traj and traj[0].get(key) is not None:
                ax.plot([p["kl"] for p in traj], [p[key] for p in traj], "-o", ms=3, color="tab:red", alpha=0.6,
                        label="PPO during training")
            hist = results.get("cem", {}).get("history") or []
            cem_pts = [(h.get("eval_kl_to_sft"), h.get(f"eval_{key}")) for h in hist if h.get(f"eval_{key}") is not None]
            for i, row in enumerate(table):
                if row.get(key) is None:
                    continue
                ax.scatter(row["kl_to_sft"], row[key], s=60, zorder=3, edgecolors="black", linewidths=0.5,
                           label=_label(row), **style[i])
            if cem_pts and all(x is not None for x, _ in cem_pts):
                ax.plot(*zip(*cem_pts), "--s", ms=3, color="tab:green", alpha=0.6, label="CEM rounds")
            ax.set_xlabel("KL(π ‖ SFT), nats per answer")
            ax.set_title(title)
            ax.grid(alpha=0.3)
        handles = {}
        for ax in axes:  # one entry per label, from whichever panel has it
            for handle, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, handle)
        rows = -(-len(handles) // 4)
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=4, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.07 * rows, 1, 1))
        fig.savefig(out / "reward_vs_kl.png", dpi=120)
        plt.close(fig)
        files.append("reward_vs_kl.png")
    # 2. CEM rounds
    hist = results.get("cem", {}).get("history") or []
    if hist:
        # holdout measurements after each round: proxy (optimized), gold (truth), entropy and distinct-2 (diversity)
        keys = [k for k in ("eval_reward_mean", "eval_gold_mean", "eval_entropy", "eval_distinct_2", "elite_count") if any(k in h for h in hist)]
        if not keys:
            keys = sorted({k for h in hist for k, v in h.items() if isinstance(v, (int, float)) and k != "round"})[:5]
        fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), squeeze=False)
        for ax, key in zip(axes[0], keys):
            pts = [(h.get("round"), h[key]) for h in hist if isinstance(h.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), "-o")
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("round")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "cem_rounds.png", dpi=120)
        plt.close(fig)
        files.append("cem_rounds.png")
    # 3. reward-model accuracies against gold labels
    acc = results.get("reward", {}).get("accuracies") or {}
    if acc:
        names = list(acc)
        metric = "gold_accuracy" if "gold_accuracy" in next(iter(acc.values())) else "accuracy"
        overall = [acc[n].get(metric, float("nan")) for n in names]
        hard = [acc[n].get("hard_quartile_gold_accuracy", float("nan")) for n in names]
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], overall, width=0.4, label="all held-out pairs")
        ax.bar([i + 0.2 for i in x], hard, width=0.4, label="hardest quartile (by gold margin)")
        ax.set_xticks(list(x), names, fontsize=9)
        ax.set_ylim(0.4, 1.0)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_ylabel("accuracy vs gold")
        ax.legend(fontsize=8)
        ax.set_title("reward models")
        fig.tight_layout()
        fig.savefig(out / "reward_models.png", dpi=120)
        plt.close(fig)
        files.append("reward_models.png")
    return files


#: The final table alone, in the report directory: what README embeds (``benchmarks/method_ranking.py`` copies it).
TABLE_FILE = "table.md"


def side_by_side_markdown(results: dict) -> str:
    """Each win rate of the final table with its counts: n = wins + losses (ties excluded), the ties, and the 95%
    Wilson interval the evaluation computed; "" without side-by-side rows."""
    rows = [r for r in (results.get("evaluate") or {}).get("table") or [] if r.get("win_rate") is not None]
    if not rows:
        return ""
    lines = ["| method | decoding | win rate vs SFT (n = wins + losses, 95% CI) | ties | p-value |", "|---|---|---:|---:|---:|"]
    for r in rows:
        for suffix, decoding in (("", "sampled"), ("_greedy", "greedy")):
            if r.get(f"win_rate{suffix}") is None:
                continue
            wins, losses, ties = r.get(f"wins{suffix}"), r.get(f"losses{suffix}"), r.get(f"ties{suffix}")
            n = (wins or 0) + (losses or 0) if wins is not None else None
            ci = r.get(f"win_rate_ci{suffix}")
            cell = f"{fmt(r[f'win_rate{suffix}'])} (n={n}" + (f", 95% CI [{ci[0]:.3f}, {ci[1]:.3f}])" if ci else ")")
            p = r.get(f"p_value{suffix}")
            lines.append(f"| {_label(r)} | {decoding} | {cell} | {ties if ties is not None else '–'} | "
                         f"{f'{p:.1e}' if p is not None else '–'} |")  # fmt: skip
    return "\n".join(lines)


def table_markdown(results: dict) -> str:
    """The final evaluation table as Markdown (a caption line and a fenced fixed-width table, no heading: README
    embeds it inside its own sections); "" without one."""
    ev = results.get("evaluate", {})
    table = ev.get("table")
    if not table:
        return ""
    return "\n".join([
        f"Final table ({ev['num_prompts']} holdout prompts; gold: one sample each at T={ev.get('temperature', '?')}, "
        f"greedy: the greedy answer; side-by-side judge: {ev['judge']}; p-value: two-sided binomial test, ties "
        "excluded):",
        "",
        "```",
        *table_lines(table),
        "```",
    ])


def write_report(results: dict, out: Path, title: str = "trl-extras pipeline report") -> Path:
    """Write ``report.md`` (+ plots, + ``results.json``) into ``out`` and return its path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    plots = make_plots(results, out)
    md = [f"# {title}", ""]
    table_md = table_markdown(results)
    if table_md:
        md += ["## Final table", "", table_md, ""]
        (out / TABLE_FILE).write_text(table_md)
    sbs_md = side_by_side_markdown(results)
    if sbs_md:
        md += ["## Side-by-side against the SFT model", "", sbs_md, ""]
    if "reward_vs_kl.png" in plots:
        md += ["## Reward against KL to the SFT model", "", "![reward vs KL](reward_vs_kl.png)", ""]
    sft = results.get("sft")
    if sft:
        md += [
            "## SFT with reward-based early stopping",
            "",
            f"Best step by eval_reward: {sft.get('best_step_by_reward')}; by eval_loss: {sft.get('best_step_by_loss')}; "
            f"stopped at step {sft.get('stopped_at_step')} ({sft.get('seconds', '?')} s).",
            "",
            "| step | eval_loss | eval_reward | gold |",
            "|---:|---:|---:|---:|",
        ]
        for e in sft.get("evaluations", []):
            gold = next((v for k, v in e.items() if "gold" in k), None)
            md.append(f"| {e.get('step')} | {fmt(e.get('eval_loss'))} | {fmt(e.get('eval_reward'))} | {fmt(gold)} |")
        md.append("")
    rm = results.get("reward")
    if rm:
        md += ["## Reward models (accuracy on held-out gold-labelled pairs)", "",
               "Each accuracy with its number of pairs n and a 95% Wilson interval; ECE over the same n pairs "
               "(σ(margin) against the gold label; few pairs make it noisy).", "",
               "| model | accuracy vs gold (n, 95% CI) | hardest quartile (n, 95% CI) | ECE (n) |", "|---|---:|---:|---:|"]  # fmt: skip
        for name, m in rm.get("accuracies", {}).items():
            md.append(f"| {name} | {reward_model_cells(m)} |")
        filt = rm.get("filtering") or {}
        if filt:
            md += ["", f"Easy-pair filtering: {json.dumps({k: v for k, v in filt.items() if k in ('num_pairs', 'num_kept', 'num_dropped_easy', 'num_dropped_suspect', 'num_input', 'num_dropped')}, default=str)}"]
        if "reward_models.png" in plots:
            md += ["", "![reward models](reward_models.png)"]
        md.append("")
    ens = results.get("ensemble")
    if ens and "std_on_distribution" in ens:
        md += [
            "## Reward ensemble",
            "",
            f"K={ens['k']}, penalty {ens['penalty']} with λ={ens['coef']}. Mean member std on SFT-distribution answers: "
            f"{fmt(ens['std_on_distribution'])}; on hacked off-distribution answers: {fmt(ens['std_off_distribution'])}.",
            "",
        ]
    if "cem_rounds.png" in plots:
        md += ["## CEM rounds", "", "![CEM rounds](cem_rounds.png)", ""]
    timings = {k: v.get("seconds") for k, v in results.items() if isinstance(v, dict) and "seconds" in v}
    if timings:
        md += ["## Stage timings (s)", "", " | ".join(f"{k}: {v}" for k, v in timings.items()), ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path

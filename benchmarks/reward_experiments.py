"""Reward-model experiments on the testbed: dirty→clean vs clean-only vs dirty-only, and easy-pair filtering.

Every reward model is the testbed SFT policy with a new score head (the seed's recipe). Evaluation: fresh clean
pairs labelled by gold (no flips) — accuracy against gold, accuracy on the hardest quartile (smallest |gold
margin|), and calibration error of σ(margin) against the gold label.

1. Clean budgets 100/300/1000 (10% flipped labels): clean-only, dirty-only (1500 heuristic pairs, 1 epoch) and
   dirty→clean (``TwoStageRewardTrainer``; stage 1 is trained once and later budgets resume from its
   ``output_dir/stage1`` model, the "finished stage 1" resume path).
2. Filtering on 600 clean pairs: one RM trained on all pairs scores the margins, then a fresh RM is trained
   after dropping the easiest 0 / 10 / 20 / 40 % (plus runs that drop the 10 % most suspect pairs), trained for
   the same number of optimizer steps as the all-pairs model.

Each seed redraws the training pairs, the head initialisation and the data order; the table gives the mean and
sample std over seeds.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/reward_experiments.py   # ~1000 steps: minutes on a free CPU
    .venv/bin/python benchmarks/reward_experiments.py --quick                   # smoke run

Writes ``benchmarks/results/reward_experiments.json`` and ``reward_experiments.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

RESULTS = Path(__file__).parent / "results"


def common_args(output_dir: str, epochs: float, lr: float, seed: int, **kw) -> dict:
    import torch

    return dict(
        output_dir=output_dir,
        num_train_epochs=epochs,
        learning_rate=lr,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        lr_scheduler_type="linear",
        warmup_steps=0,
        logging_steps=50,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        **kw,
    )


def evaluate(model, tok, eval_ds) -> dict:
    from trl_extras.rewards.metrics import evaluate_reward_model

    m = evaluate_reward_model(model, tok, eval_ds, batch_size=128)
    return {
        "gold_accuracy": m["gold_accuracy"],
        "hard_quartile_gold_accuracy": m["hard_quartile_gold_accuracy"],
        "gold_ece": m["gold_ece"],
    }


def run_seed(args, seed: int, sft: str, eval_ds, log) -> dict:
    """Both experiments for one seed (seed = training pairs, head init and data order)."""
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from trl_extras.rewards.filtering import filter_easy_pairs
    from trl_extras.rewards.pairs import pair_margins
    from trl_extras.rewards.two_stage import TwoStageRewardConfig, TwoStageRewardTrainer
    from trl_extras.testbed import clean_pairs, dirty_pairs

    budgets = [int(b) for b in args.budgets.split(",")]
    dirty = dirty_pairs(args.dirty_pairs, seed=9100 + seed)
    clean_all = clean_pairs(max(budgets + [args.filter_pairs]), flip_rate=0.1, seed=9200 + seed)
    out = {"seed": seed, "budgets": [], "filtering": []}
    tmp = tempfile.mkdtemp(prefix=f"reward_exp_{seed}_")

    # -- 1. dirty→clean vs clean-only vs dirty-only
    stage1_dir = None
    for n in budgets:
        clean = clean_all.select(range(n))
        row = {"clean_pairs": n}
        cfg = TwoStageRewardConfig(
            **common_args(f"{tmp}/two_stage_{n}", args.clean_epochs, args.clean_lr, seed),
            pretrain_num_train_epochs=args.dirty_epochs,
            pretrain_learning_rate=args.dirty_lr,
        )
        trainer = TwoStageRewardTrainer(model=sft, args=cfg, pretrain_dataset=dirty, train_dataset=clean)
        trainer.train(resume_from_checkpoint=stage1_dir)  # later budgets start stage 2 from the saved stage 1
        if stage1_dir is None:
            stage1_dir = trainer.stage1_dir
            stage1_model = AutoModelForSequenceClassification.from_pretrained(stage1_dir)
            out["dirty_only"] = evaluate(stage1_model, trainer.processing_class, eval_ds)
        row["dirty_then_clean"] = evaluate(trainer.model, trainer.processing_class, eval_ds)
        plain = RewardTrainer(
            model=sft,
            args=RewardConfig(**common_args(f"{tmp}/clean_{n}", args.clean_epochs, args.clean_lr, seed)),
            train_dataset=clean,
        )
        plain.train()
        row["clean_only"] = evaluate(plain.model, plain.processing_class, eval_ds)
        out["budgets"].append(row)
        log(f"seed {seed} budget {n}: {json.dumps(row)}")

    # -- 2. filtering on `filter_pairs` clean pairs
    clean = clean_all.select(range(args.filter_pairs))
    flipped = dict(zip(clean["id"], clean["flipped"]))
    out["flipped_share_all"] = sum(clean["flipped"]) / len(clean)
    scorer = RewardTrainer(
        model=sft,
        args=RewardConfig(**common_args(f"{tmp}/filter_all", args.clean_epochs, args.clean_lr, seed)),
        train_dataset=clean,
    )
    scorer.train()
    # Same number of optimizer steps for every filtered run: fewer pairs must not mean less training.
    steps = scorer.state.global_step
    margins = pair_margins(scorer.model, scorer.processing_class, clean, batch_size=128)
    for drop_easiest, drop_suspect in FILTER_RUNS:
        row = {"drop_easiest": drop_easiest, "drop_suspect": drop_suspect}
        if drop_easiest == 0 and drop_suspect == 0:
            row.update(kept=len(clean), **evaluate(scorer.model, scorer.processing_class, eval_ds))
        else:
            kept_ds, report = filter_easy_pairs(
                None, clean, scorer.processing_class, drop_easiest, drop_suspect, margins=margins
            )
            tag = f"{drop_easiest}_{drop_suspect}"
            fresh = RewardTrainer(
                model=sft,
                args=RewardConfig(
                    **common_args(f"{tmp}/filter_{tag}", args.clean_epochs, args.clean_lr, seed, max_steps=steps)
                ),
                train_dataset=kept_ds,
            )
            fresh.train()
            row.update(kept=len(kept_ds), **evaluate(fresh.model, fresh.processing_class, eval_ds))
            easy_ids, sus_ids = report.dropped_easy_ids, report.dropped_suspect_ids
            row["flipped_share_dropped_easy"] = sum(flipped[i] for i in easy_ids) / len(easy_ids) if easy_ids else None
            row["flipped_share_dropped_suspect"] = sum(flipped[i] for i in sus_ids) / len(sus_ids) if sus_ids else None
        out["filtering"].append(row)
        log(f"seed {seed} filter: {json.dumps(row)}")
    out["filter_steps"] = steps
    return out


FILTER_RUNS = [(0.0, 0.0), (0.1, 0.0), (0.2, 0.0), (0.4, 0.0), (0.2, 0.1), (0.0, 0.1)]


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "values": values}


def aggregate(per_seed: list[dict]) -> dict:
    """Mean and sample std over seeds of every metric, same layout as one seed's result."""
    first = per_seed[0]

    def agg_dict(dicts):
        return {k: _mean_std([d[k] for d in dicts]) for k in dicts[0] if isinstance(dicts[0][k], float)}

    out = {"dirty_only": agg_dict([r["dirty_only"] for r in per_seed]), "budgets": [], "filtering": []}
    for i, row in enumerate(first["budgets"]):
        rows = [r["budgets"][i] for r in per_seed]
        out["budgets"].append(
            {
                "clean_pairs": row["clean_pairs"],
                "clean_only": agg_dict([x["clean_only"] for x in rows]),
                "dirty_then_clean": agg_dict([x["dirty_then_clean"] for x in rows]),
            }
        )
    for i, row in enumerate(first["filtering"]):
        rows = [r["filtering"][i] for r in per_seed]
        agg = {k: _mean_std([x.get(k) for x in rows]) for k in row if k not in ("drop_easiest", "drop_suspect")}
        out["filtering"].append({"drop_easiest": row["drop_easiest"], "drop_suspect": row["drop_suspect"], **agg})
    out["flipped_share_all"] = _mean_std([r["flipped_share_all"] for r in per_seed])
    return out


def run(args, save=lambda results: None) -> dict:
    import torch

    from trl_extras.testbed import build_sft_policy, clean_pairs

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    sft = build_sft_policy()
    eval_ds = clean_pairs(args.eval_pairs, flip_rate=0.0, seed=9000)
    results = {"config": vars(args), "per_seed": []}
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", flush=True)

    for seed in [int(s) for s in args.seeds.split(",")]:
        results["per_seed"].append(run_seed(args, seed, sft, eval_ds, log))
        results.update(aggregate(results["per_seed"]))
        save(results)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return results


def to_markdown(r: dict) -> str:
    n_seeds = len(r["per_seed"])

    def f(x):
        if x is None:
            return "–"
        return f"{x['mean']:.3f}" + (f" ± {x['std']:.3f}" if n_seeds > 1 else "")

    def triple(x):
        return f"{f(x['gold_accuracy'])} / {f(x['hard_quartile_gold_accuracy'])} / {f(x['gold_ece'])}"

    c = r["config"]
    lines = [
        "# Reward-model experiments (testbed)",
        "",
        f"RM = testbed SFT policy + new score head. Eval: {c['eval_pairs']} fresh gold-labelled pairs (labels = gold). "
        f"Dirty: {c['dirty_pairs']} heuristic-labelled pairs, {c['dirty_epochs']} epoch(s), lr {c['dirty_lr']}; "
        f"clean: 10% flipped labels, {c['clean_epochs']} epochs, lr {c['clean_lr']}. Seeds {c['seeds']} "
        f"(mean ± sample std over seeds), {r['device']}, {r['seconds']} s.",
        "",
        "## Dirty→clean vs clean-only vs dirty-only",
        "",
        "Cells: gold accuracy / accuracy on the hardest quartile (smallest |gold margin|) / ECE of σ(margin).",
        "",
        "| clean pairs | clean-only | dirty-only | dirty→clean |",
        "|---|---|---|---|",
    ]
    for row in r["budgets"]:
        cells = [triple(row["clean_only"]), triple(r["dirty_only"]), triple(row["dirty_then_clean"])]
        lines.append(f"| {row['clean_pairs']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Easy-pair filtering on {c['filter_pairs']} clean pairs",
        "",
        f"An RM trained on all pairs scores them; a fresh RM is trained on the kept pairs for the same number of "
        f"optimizer steps ({r['per_seed'][0]['filter_steps']}). Flipped share overall: {f(r['flipped_share_all'])}.",
        "",
        "| drop easiest | drop suspect | kept | gold acc | hard-quartile acc | ECE | flipped among dropped easy | "
        "flipped among dropped suspect |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in r["filtering"]:
        lines.append(
            f"| {row['drop_easiest']:.1f} | {row['drop_suspect']:.1f} | {row['kept']['mean']:.0f} | "
            f"{f(row['gold_accuracy'])} | {f(row['hard_quartile_gold_accuracy'])} | {f(row['gold_ece'])} | "
            f"{f(row.get('flipped_share_dropped_easy'))} | {f(row.get('flipped_share_dropped_suspect'))} |"
        )
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", default="100,300,1000")
    p.add_argument("--dirty_pairs", type=int, default=1500)
    p.add_argument("--filter_pairs", type=int, default=600)
    p.add_argument("--eval_pairs", type=int, default=300)
    p.add_argument("--dirty_epochs", type=float, default=1.0)
    p.add_argument("--clean_epochs", type=float, default=2.0)
    p.add_argument("--dirty_lr", type=float, default=1e-4)
    p.add_argument("--clean_lr", type=float, default=5e-5)
    p.add_argument("--seeds", default="0,1", help="comma-separated; each seed redraws the training pairs")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    p.add_argument("--output", default=str(RESULTS / "reward_experiments"))
    args = p.parse_args()
    if args.quick:
        args.budgets, args.dirty_pairs, args.filter_pairs, args.eval_pairs = "20,40", 64, 40, 40
        args.dirty_epochs = args.clean_epochs = 1.0
        args.seeds = "0"
        if args.output == str(RESULTS / "reward_experiments"):
            args.output = os.path.join(tempfile.gettempdir(), "reward_experiments_quick")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(results):  # after every row, so an interrupted run keeps what it measured
        out.with_suffix(".json").write_text(json.dumps(results, indent=2))

    results = run(args, save)
    save(results)
    md = to_markdown(results)
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()

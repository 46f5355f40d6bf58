"""The article's reward-model techniques with statistics (issue 13, item 4): dirty→clean vs clean-only vs dirty-only,
and easy-pair / suspect-pair filtering, each over several seeds with confidence intervals and paired tests.

Every reward model is the task's SFT policy (task seed 0, built once and cached) with a new score head — the
seed's recipe. A *seed* ``s`` redraws everything else: the dirty pairs, the clean pairs (10% flipped labels), the
eval pairs, the head initialisation and the data order. Within a seed every method sees the same clean pairs (the
budgets are nested prefixes: the 100 pairs are the first 100 of the 300) and is scored on the same eval pairs, so
methods are compared *paired*.

1. Budgets (default 100 / 300 / 1000 clean pairs): clean-only (RewardTrainer on the clean pairs), dirty-only (the
   stage-1 model: RewardTrainer on the dirty heuristic-labelled pairs; no clean pair) and dirty→clean
   (``TwoStageRewardTrainer``; stage 1 is trained once per seed and every budget's stage 2 starts from it).
2. Filtering on the ``--filter_pairs`` clean pairs: the clean-only model of that budget (trained on all of them)
   scores the pairs; a fresh RM is trained on what is left after dropping the easiest fraction (largest margins,
   ``e``), the most suspect fraction (most negative margins, ``s``), both, or a *random* fraction (``r``, the
   control: does it matter which pairs go, or only that fewer distinct pairs are seen?), for the same number of
   optimizer steps as the all-pairs model.

Evaluation: ``--eval_pairs`` fresh pairs labelled by gold (no flips; pairs that also occur in a training set are
dropped), per seed. Accuracy against gold overall and on the hardest quartile (the 25% smallest |gold margin|).

Statistics (``trl_extras.core.stats``): per cell the mean over seeds with its 95% t-interval; per comparison of
two methods A, B (same seed ⇒ same data) the paired difference of accuracy over seeds (mean, 95% t-interval,
paired t-test p — the *training* noise: which model a seed's draw of data gives) and, pooled over seeds, the exact
McNemar test on the eval pairs where A and B disagree (the *evaluation* noise only). A claim is called holding
when the paired t-test gives p < 0.05 (the McNemar p is reported beside it).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/reward_experiments.py --seeds 0,1,2,3,4,5,6,7  # results/
    # (~4-5 min per seed on one shared CPU thread: 15 RM trainings, ~1450 optimizer steps, 16 x 1000-pair scorings)
    .venv/bin/python benchmarks/reward_experiments.py --quick   # smoke run, tiny sizes, 2 seeds

Resumable: each (seed, cell) is written to ``--cells_dir`` as soon as it is measured and a rerun with the same
settings skips it. Writes ``benchmarks/results/reward_experiments.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

RESULTS = Path(__file__).parent / "results"
METRICS = ("overall", "hard")  # accuracy on all eval pairs / on the hardest quartile
METRIC_NAMES = {"overall": "all eval pairs", "hard": "hardest quartile"}
# settings that change what a cell measures (the cache key of --cells_dir)
CELL_SETTINGS = ("task", "budgets", "dirty_pairs", "filter_pairs", "eval_pairs", "dirty_epochs", "clean_epochs",
                 "dirty_lr", "clean_lr", "flip_rate", "batch_size")


# ----------------------------------------------------------------------------------------------- filter specs


def parse_filter_runs(spec: str) -> list[dict]:
    """``"e0.1,s0.05,e0.2+s0.1,r0.2"`` -> runs ``{"name", "easy", "suspect", "random"}`` (fractions dropped)."""
    runs = []
    for item in [x for x in spec.split(",") if x.strip()]:
        run = {"name": item.strip(), "easy": 0.0, "suspect": 0.0, "random": 0.0}
        for part in item.strip().split("+"):
            kind, value = {"e": "easy", "s": "suspect", "r": "random"}.get(part[:1]), part[1:]
            try:
                frac = float(value)
            except ValueError:
                frac = -1.0
            if kind is None or not 0.0 < frac < 1.0:
                raise ValueError(f"--filter_runs: bad item {part!r}; expected e<frac>, s<frac> or r<frac> with "
                                 f"0 < frac < 1, joined by '+' (e.g. 'e0.2+s0.1')")
            run[kind] = frac
        if run["random"] and (run["easy"] or run["suspect"]):
            raise ValueError(f"--filter_runs: {item!r} mixes random with margin-based dropping")
        if run["easy"] + run["suspect"] + run["random"] >= 1.0:
            raise ValueError(f"--filter_runs: {item!r} drops everything")
        runs.append(run)
    return runs


# ----------------------------------------------------------------------------------------------- one seed


def common_args(output_dir: str, epochs: float, lr: float, seed: int, batch_size: int, **kw) -> dict:
    import torch

    return dict(
        output_dir=output_dir,
        num_train_epochs=epochs,
        learning_rate=lr,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=64,
        lr_scheduler_type="linear",
        warmup_steps=0,
        logging_steps=1000,
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


def _pair_key(prompt, a, b) -> tuple:
    return prompt, frozenset((a, b))


def seed_data(tb, args, seed: int) -> dict:
    """The article's datasets: dirty pairs, the clean pool (the largest budget), eval pairs (none also trained on)."""
    config = tb.TaskConfig(seed=0)  # the prompt pool of the SFT policy the RMs start from
    budgets = [int(b) for b in args.budgets.split(",")]
    dirty = tb.dirty_pairs(args.dirty_pairs, config=config, seed=9100 + seed)
    clean = tb.clean_pairs(max(budgets + [args.filter_pairs]), flip_rate=args.flip_rate, config=config,
                           seed=9200 + seed)
    seen = {_pair_key(*row) for ds in (dirty, clean) for row in zip(ds["prompt"], ds["chosen"], ds["rejected"])}
    fresh = tb.clean_pairs(2 * args.eval_pairs, flip_rate=0.0, config=config, seed=9000 + seed)
    keep = [i for i, row in enumerate(zip(fresh["prompt"], fresh["chosen"], fresh["rejected"]))
            if _pair_key(*row) not in seen][: args.eval_pairs]
    if len(keep) < args.eval_pairs:
        raise RuntimeError(f"only {len(keep)} eval pairs are not in a training set; lower --eval_pairs")
    return {"dirty": dirty, "clean": clean, "eval": fresh.select(keep),
            "eval_overlap_dropped": keep[-1] + 1 - len(keep)}


def score(model, tok, eval_ds, hard_idx) -> dict:
    """Accuracy against gold (overall, hardest quartile), ECE, and the per-pair right/wrong string for McNemar."""
    from trl_extras.rewards.metrics import calibration_error, hard_quartile_accuracy, pairwise_accuracy
    from trl_extras.rewards.pairs import gold_margins, pair_margins

    margins = pair_margins(model, tok, eval_ds, batch_size=128)
    gold = gold_margins(eval_ds)
    right = ((margins * gold) > 0).tolist()
    overall = pairwise_accuracy(margins, gold)
    hard = hard_quartile_accuracy(margins, gold)
    # the per-pair strings must give the same accuracies (up to exact ties, which count 1/2 there)
    assert abs(overall - sum(right) / len(right)) < 0.01 and abs(hard - sum(right[i] for i in hard_idx) / len(hard_idx)) < 0.02
    return {
        "overall": overall,
        "hard": hard,
        "gold_ece": calibration_error(margins, (gold > 0).double()),
        "right": "".join("1" if r else "0" for r in right),
    }


def hard_indices(eval_ds) -> list[int]:
    """Indices of the hardest quartile: the 25% smallest |gold margin|, ties by position (as ``hard_quartile_accuracy``)."""
    import torch

    from trl_extras.rewards.pairs import gold_margins

    g = gold_margins(eval_ds).abs()
    return sorted(torch.sort(g, stable=True).indices[: math.ceil(0.25 * len(g))].tolist())


def run_seed(args, tb, seed: int, sft: str, cells_dir: Path, log, phases=("budgets", "filters"),
             out: dict | None = None, data: dict | None = None) -> dict:
    """The cells of ``phases`` for one seed, each read from ``cells_dir`` when already measured, else trained and
    written there; added to ``out`` (this seed's result so far) when given. ``data``: :func:`seed_data`'s result."""
    import torch
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    from trl_extras.rewards.filtering import filter_easy_pairs
    from trl_extras.rewards.two_stage import TwoStageRewardConfig, TwoStageRewardTrainer, read_stage_marker

    seed_dir = cells_dir / f"seed{seed}"
    seed_dir.mkdir(parents=True, exist_ok=True)
    data = data or seed_data(tb, args, seed)
    eval_ds, hard_idx = data["eval"], hard_indices(data["eval"])
    budgets = [int(b) for b in args.budgets.split(",")]
    out = out or {"seed": seed, "eval_overlap_dropped": data["eval_overlap_dropped"], "hard_idx_n": len(hard_idx),
                  "hard_idx": hard_idx, "cells": {},
                  "dirty_agrees_with_gold": sum(data["dirty"]["agrees_with_gold"]) / len(data["dirty"]),
                  "dirty_easy_share": sum(data["dirty"]["easy"]) / len(data["dirty"]),
                  "clean_flipped_share": sum(data["clean"]["flipped"]) / len(data["clean"])}

    def cell(name, fn):
        path = seed_dir / f"{name}.json"
        if path.exists():
            out["cells"][name] = json.loads(path.read_text())
            return out["cells"][name]
        start = time.perf_counter()
        set_seed(seed)  # head init and data order depend on the seed only, not on which cells ran before
        result = fn()
        result["seconds"] = round(time.perf_counter() - start, 1)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(path)
        out["cells"][name] = result
        log(f"seed {seed} {name}: acc {result['overall']:.3f} hard {result['hard']:.3f} ({result['seconds']} s)")
        return result

    def rm_args(tag, epochs, lr, **kw):
        return common_args(str(seed_dir / "runs" / tag), epochs, lr, seed, args.batch_size, **kw)

    def train_plain(tag, dataset, **kw):
        trainer = RewardTrainer(model=sft, args=RewardConfig(**rm_args(tag, args.clean_epochs, args.clean_lr, **kw)),
                                train_dataset=dataset)
        trainer.train()
        return trainer

    # -- 1. dirty→clean vs clean-only vs dirty-only
    stage1 = seed_dir / "runs" / "two_stage" / "stage1"

    def two_stage(clean):
        cfg = TwoStageRewardConfig(**rm_args("two_stage", args.clean_epochs, args.clean_lr),
                                   pretrain_num_train_epochs=args.dirty_epochs, pretrain_learning_rate=args.dirty_lr)
        trainer = TwoStageRewardTrainer(model=sft, args=cfg, pretrain_dataset=data["dirty"], train_dataset=clean)
        done = (read_stage_marker(str(stage1)) or {}).get("completed", False)
        trainer.train(resume_from_checkpoint=str(stage1) if done else None)  # stage 1 once per seed
        return trainer

    for n in budgets if "budgets" in phases else []:
        clean = data["clean"].select(range(n))

        def dirty_then_clean(clean=clean):
            trainer = two_stage(clean)
            return score(trainer.model, trainer.processing_class, eval_ds, hard_idx)

        cell(f"dirty_then_clean_{n}", dirty_then_clean)

        def clean_only(clean=clean, n=n):
            trainer = train_plain(f"clean_{n}", clean)
            result = score(trainer.model, trainer.processing_class, eval_ds, hard_idx)
            if n == args.filter_pairs:  # it is the filtering study's scorer: keep its margins on its training pairs
                from trl_extras.rewards.pairs import pair_margins

                result["train_margins"] = pair_margins(trainer.model, trainer.processing_class, clean,
                                                       batch_size=128).tolist()
                result["steps"] = trainer.state.global_step
            return result

        cell(f"clean_only_{n}", clean_only)

    def dirty_only():
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not (read_stage_marker(str(stage1)) or {}).get("completed", False):
            two_stage(data["clean"].select(range(budgets[0])))
        model = AutoModelForSequenceClassification.from_pretrained(str(stage1))
        return score(model, AutoTokenizer.from_pretrained(str(stage1)), eval_ds, hard_idx)

    if "budgets" in phases:
        cell("dirty_only", dirty_only)
    if "filters" not in phases:
        return out

    # -- 2. filtering on the first `filter_pairs` clean pairs; the clean-only model of that budget is the scorer
    pool = data["clean"].select(range(args.filter_pairs))
    name = f"clean_only_{args.filter_pairs}"  # main() checks filter_pairs is a budget: the budget phase made it
    scorer = out["cells"].get(name) or json.loads((seed_dir / f"{name}.json").read_text())
    margins = torch.tensor(scorer["train_margins"])
    flipped = pool["flipped"]
    out["flipped_share_pool"] = sum(flipped) / len(flipped)
    for run in parse_filter_runs(args.filter_runs):

        def filtered(run=run):
            if run["random"]:
                rng = random.Random(7000 + seed)
                drop = set(rng.sample(range(len(pool)), math.floor(run["random"] * len(pool) + 1e-9)))
                kept = pool.select([i for i in range(len(pool)) if i not in drop])
                dropped = {"random": sorted(drop)}
            else:
                kept, report = filter_easy_pairs(None, pool, None, run["easy"], run["suspect"], margins=margins)
                index = {pid: i for i, pid in enumerate(pool["id"])}
                dropped = {"easy": [index[i] for i in report.dropped_easy_ids],
                           "suspect": [index[i] for i in report.dropped_suspect_ids]}
            trainer = train_plain(f"filter_{run['name']}", kept, max_steps=scorer["steps"])
            result = score(trainer.model, trainer.processing_class, eval_ds, hard_idx)
            result["kept"] = len(kept)
            result["flipped_share_dropped"] = {
                k: (sum(flipped[i] for i in v) / len(v) if v else None) for k, v in dropped.items()}
            return result

        cell(f"filter_{run['name']}", filtered)
    return out


# ----------------------------------------------------------------------------------------------- statistics


def methods(args) -> list[tuple[str, str]]:
    """(cell name, label) of every method, budgets first."""
    budgets = [int(b) for b in args["budgets"].split(",")]
    rows = [("dirty_only", "dirty-only")]
    for n in budgets:
        rows += [(f"clean_only_{n}", f"clean-only {n}"), (f"dirty_then_clean_{n}", f"dirty→clean {n}")]
    rows += [(f"filter_{r['name']}", f"filter {r['name']}") for r in parse_filter_runs(args["filter_runs"])]
    return rows


def comparisons(args) -> list[dict]:
    """The paired comparisons (A vs B), each with the question it answers."""
    budgets = [int(b) for b in args["budgets"].split(",")]
    out = []
    for n in budgets:
        out += [
            {"group": "budget", "n": n, "a": f"dirty_then_clean_{n}", "b": f"clean_only_{n}",
             "label": f"dirty→clean vs clean-only @ {n}"},
            {"group": "budget", "n": n, "a": f"dirty_then_clean_{n}", "b": "dirty_only",
             "label": f"dirty→clean @ {n} vs dirty-only"},
            {"group": "budget", "n": n, "a": f"clean_only_{n}", "b": "dirty_only",
             "label": f"clean-only @ {n} vs dirty-only"},
        ]
    runs = parse_filter_runs(args["filter_runs"])
    all_pairs = f"clean_only_{args['filter_pairs']}"
    randoms = {r["random"]: r["name"] for r in runs if r["random"]}
    for r in runs:
        out.append({"group": "filter", "a": f"filter_{r['name']}", "b": all_pairs,
                    "label": f"filter {r['name']} vs all {args['filter_pairs']} pairs"})
        same = randoms.get(round(r["easy"] + r["suspect"], 6))
        if not r["random"] and same:
            out.append({"group": "filter", "a": f"filter_{r['name']}", "b": f"filter_{same}",
                        "label": f"filter {r['name']} vs random drop {same[1:]}"})
    return out


def aggregate(per_seed: list[dict], args: dict) -> dict:
    """Mean ± 95% CI per method; paired t over seeds and pooled exact McNemar per comparison (complete seeds only)."""
    from trl_extras.core.stats import binomial_test, holm_adjust, mcnemar_exact, mean_ci, paired_difference

    names = [m for m, _ in methods(args)]
    out = {"seeds_complete": [s["seed"] for s in per_seed if all(m in s["cells"] for m in names)],
           "methods": {}, "comparisons": []}
    for name, label in methods(args):
        seeds = [s for s in per_seed if name in s["cells"]]  # a late kill may leave some cells with fewer seeds
        if len(seeds) < 2:
            continue
        row = {"label": label, "seeds": [s["seed"] for s in seeds]}
        for metric in METRICS:
            values = [s["cells"][name][metric] for s in seeds]
            mean, low, high = mean_ci(values)
            row[metric] = {"mean": mean, "ci": [low, high], "values": values}
        extra = [s["cells"][name].get("flipped_share_dropped") for s in seeds]
        if extra[0]:
            row["flipped_share_dropped"] = {
                k: sum(e[k] for e in extra) / len(extra) for k in extra[0] if extra[0][k] is not None}
            row["kept"] = seeds[0]["cells"][name]["kept"]
        out["methods"][name] = row
    for comp in comparisons(args):
        seeds = [s for s in per_seed if comp["a"] in s["cells"] and comp["b"] in s["cells"]]
        if len(seeds) < 2:
            continue
        row = {**comp, "seeds": [s["seed"] for s in seeds]}
        for metric in METRICS:
            a = [s["cells"][comp["a"]][metric] for s in seeds]
            b = [s["cells"][comp["b"]][metric] for s in seeds]
            only_a = only_b = n_items = 0
            for s in seeds:
                ra, rb = s["cells"][comp["a"]]["right"], s["cells"][comp["b"]]["right"]
                idx = range(len(ra)) if metric == "overall" else s["hard_idx"]
                m = mcnemar_exact([int(ra[i]) for i in idx], [int(rb[i]) for i in idx])
                only_a, only_b, n_items = only_a + m["only_a"], only_b + m["only_b"], n_items + m["n"]
            row[metric] = {
                "paired": paired_difference(a, b),
                "mcnemar": {"n": n_items, "only_a": only_a, "only_b": only_b, "p_value": binomial_test(only_a, only_b)},
            }
        out["comparisons"].append(row)
    # Holm over every paired-t test reported (both metrics): which claims survive the multiplicity
    tests = [c[metric]["paired"] for c in out["comparisons"] for metric in METRICS]
    for test, adjusted in zip(tests, holm_adjust([t["p_value"] for t in tests])):
        test["p_holm"] = adjusted
    return out


# ----------------------------------------------------------------------------------------------- report


def _ci(x, n_seeds: int, digits=3) -> str:
    """``mean [low, high]`` of one method's metric; ``(n=k)`` when fewer seeds than asked for made it."""
    if x is None:
        return "–"
    n = len(x["values"])
    return (f"{x['mean']:.{digits}f} [{x['ci'][0]:.{digits}f}, {x['ci'][1]:.{digits}f}]"
            + (f" (n={n})" if n < n_seeds else ""))


def _avg(r: dict, key: str) -> float:
    values = [s[key] for s in r["per_seed"] if key in s]
    return sum(values) / len(values) if values else float("nan")


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _diff(c) -> str:
    d = c["paired"]
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def verdict(c, metric, alpha=0.05) -> str:
    d, m = c[metric]["paired"], c[metric]["mcnemar"]
    if d["p_value"] < alpha:
        word = "A better" if d["mean"] > 0 else "A worse"
        both = "" if m["p_value"] < alpha else ", McNemar not significant"
        holm = "survives Holm" if d.get("p_holm", 1.0) < alpha else "not after Holm"
        return f"**{word}** (p={_p(d['p_value'])}, {holm}{both})"
    return f"no difference shown (p={_p(d['p_value'])})"


def to_markdown(r: dict) -> str:
    c, agg = r["config"], r["aggregate"]
    budgets = [int(b) for b in c["budgets"].split(",")]
    asked = [int(x) for x in c["seeds"].split(",")]
    n_seeds = len(asked)
    complete = agg["seeds_complete"]
    M = agg["methods"]

    def ci(name, metric):
        return _ci(M.get(name, {}).get(metric), n_seeds)

    n_tests = len(agg["comparisons"]) * len(METRICS)
    lines = [
        f"# Reward-model techniques with statistics ({c['task']})",
        "",
        f"RM = the `{c['task']}` SFT policy (task seed 0) + a new score head. Per seed: {c['dirty_pairs']} dirty "
        f"(heuristic-labelled) pairs, clean pairs with {c['flip_rate']:.0%} flipped labels (budgets are nested "
        f"prefixes), {c['eval_pairs']} fresh gold-labelled eval pairs not in any training set; the hardest quartile is "
        f"the {r['per_seed'][0]['hard_idx_n']} eval pairs with the smallest |gold margin|. Dirty: {c['dirty_epochs']} "
        f"epoch(s), lr {c['dirty_lr']}; clean: {c['clean_epochs']} epochs, lr {c['clean_lr']}, batch {c['batch_size']}. "
        f"Seeds asked: {c['seeds']}; complete (every cell): {', '.join(map(str, complete)) or 'none'} — a cell "
        f"measured on fewer seeds says (n=k). A seed redraws every pair, the head init and the data order. "
        f"{r.get('device', 'cpu')}; {sum(x.get('seconds', 0) for s in r['per_seed'] for x in s['cells'].values()):.0f}"
        f" s of wall time summed over the cells (1 thread, shared CPU); {r.get('seconds', '?')} s in the last "
        f"invocation (cells measured earlier are read back from `--cells_dir`).",
        "",
        "Cells: mean accuracy against gold over seeds [95% t-interval]. Comparisons: A − B paired over seeds "
        "(mean [95% CI], paired t-test p) and, pooled over seeds, the exact McNemar test on the eval pairs where A and "
        "B disagree (pairs only A ranks right / only B ranks right, p). The paired t carries the training noise (a "
        "seed's draw of data and init), McNemar only the evaluation noise given the trained models, so a claim is "
        f"called holding on the paired t (p < 0.05). {n_tests} paired tests are reported: at α = 0.05 about "
        f"{n_tests * 0.05:.1f} false positives are expected by chance alone, so each verdict also says whether it "
        "survives Holm's correction over all of them (family-wise α = 0.05).",
        "",
        "## Dirty→clean vs clean-only vs dirty-only",
        "",
        "Label quality of the training data (mean over seeds): the dirty (heuristic) label agrees with gold on "
        f"{_avg(r, 'dirty_agrees_with_gold'):.3f} of the dirty pairs ({_avg(r, 'dirty_easy_share'):.3f} of them "
        f"trivially easy); {_avg(r, 'clean_flipped_share'):.3f} of the clean pool's labels are flipped."
        + (" So on this task the dirty set is both larger and *more often right* than the clean one: the heuristic's "
           "bias shows on off-distribution answers (the hacks PPO finds), which accuracy on in-distribution pairs "
           "does not measure, so read dirty-only's accuracy here as an upper bound on its usefulness."
           if _avg(r, "dirty_agrees_with_gold") > 1 - _avg(r, "clean_flipped_share") else ""),
        "",
        "| clean pairs | metric | clean-only | dirty-only | dirty→clean |",
        "|---|---|---|---|---|",
    ]
    for n in budgets:
        for metric in METRICS:
            lines.append(f"| {n} | {METRIC_NAMES[metric]} | {ci(f'clean_only_{n}', metric)} | "
                         f"{ci('dirty_only', metric)} | {ci(f'dirty_then_clean_{n}', metric)} |")
    lines += ["", *comparison_table([x for x in agg["comparisons"] if x["group"] == "budget"])]
    runs = parse_filter_runs(c["filter_runs"])
    base = f"clean_only_{c['filter_pairs']}"
    pools = [s["flipped_share_pool"] for s in r["per_seed"] if "flipped_share_pool" in s]
    lines += [
        "",
        f"## Easy-pair and suspect-pair filtering on {c['filter_pairs']} clean pairs",
        "",
        f"The clean-only RM trained on all {c['filter_pairs']} pairs scores them; a fresh RM is trained on the kept "
        f"pairs for the same number of optimizer steps. `e`: drop the easiest fraction (largest margins), `s`: the "
        f"most suspect (most negative margins), `r`: a random fraction (control). Flipped share of the pool: "
        + (f"{sum(pools) / len(pools):.3f}." if pools else "–."),
        "",
        "| run | kept | all eval pairs | hardest quartile | flipped share among dropped (easy / suspect / random) |",
        "|---|---|---|---|---|",
        f"| all pairs | {c['filter_pairs']} | {ci(base, 'overall')} | {ci(base, 'hard')} | – |",
    ]
    for run in runs:
        row = M.get(f"filter_{run['name']}", {})
        fs = row.get("flipped_share_dropped", {})
        shares = " / ".join(f"{fs[k]:.3f}" if k in fs else "–" for k in ("easy", "suspect", "random"))
        name = f"filter_{run['name']}"
        lines.append(f"| {run['name']} | {row.get('kept', '–')} | {ci(name, 'overall')} | {ci(name, 'hard')} | "
                     f"{shares} |")
    lines += ["", *comparison_table([x for x in agg["comparisons"] if x["group"] == "filter"])]
    lines += ["", "## What holds", "", *summary_lines(r)]
    return "\n".join(lines) + "\n"


def comparison_table(rows) -> list[str]:
    out = [
        "| comparison (A vs B) | A − B, all [95% CI] | paired t p | McNemar A/B only, p | verdict (all) | "
        "A − B, hardest quartile [95% CI] | paired t p | McNemar A/B only, p | verdict (hardest quartile) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in rows:
        cells = []
        for metric in METRICS:
            m = x[metric]["mcnemar"]
            cells += [_diff(x[metric]), _p(x[metric]["paired"]["p_value"]),
                      f"{m['only_a']}/{m['only_b']}, {_p(m['p_value'])}", verdict(x, metric)]
        out.append(f"| {x['label']} | " + " | ".join(cells) + " |")
    return out


def summary_lines(r: dict) -> list[str]:
    """One plain sentence per comparison: what holds and what does not."""
    lines = []
    for x in r["aggregate"]["comparisons"]:
        a, b = x["label"].split(" vs ", 1)
        parts = []
        for metric in METRICS:
            d, m = x[metric]["paired"], x[metric]["mcnemar"]
            if d["p_value"] < 0.05:
                holm = "" if d.get("p_holm", 1.0) < 0.05 else " (not after Holm)"
                word = f"**{a} {'beats' if d['mean'] > 0 else 'loses to'} {b}**{holm}"
            else:
                word = "no difference shown"
            parts.append(f"{METRIC_NAMES[metric]}: {word} ({d['mean']:+.3f}, CI [{d['low']:+.3f}, {d['high']:+.3f}], "
                         f"p={_p(d['p_value'])}; McNemar {m['only_a']}/{m['only_b']}, p={_p(m['p_value'])})")
        lines.append(f"- {x['label']}: " + "; ".join(parts) + ".")
    return lines


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    c, M = r["config"], r["aggregate"]["methods"]
    budgets = [int(b) for b in c["budgets"].split(",")]
    runs = parse_filter_runs(c["filter_runs"])
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), squeeze=False)

    def stat(name, metric):
        return M.get(name, {}).get(metric)

    def bar(ax, x, stats, **kw):  # points whose cell has fewer than 2 seeds are left out
        xs = [xi for xi, st in zip(x, stats) if st is not None]
        stats = [st for st in stats if st is not None]
        if not stats:
            return
        kw = {"capsize": 3, "marker": "o", **kw}
        ax.errorbar(xs, [st["mean"] for st in stats],
                    yerr=[[st["mean"] - st["ci"][0] for st in stats], [st["ci"][1] - st["mean"] for st in stats]], **kw)

    single = [x for x in runs if sum(x[k] > 0 for k in ("easy", "suspect", "random")) == 1]
    for row, metric in enumerate(METRICS):
        ax = axes[row][0]
        # nudged apart on the log axis so the two methods' error bars do not hide each other
        bar(ax, [n * 0.97 for n in budgets], [stat(f"clean_only_{n}", metric) for n in budgets], label="clean-only")
        bar(ax, [n * 1.03 for n in budgets], [stat(f"dirty_then_clean_{n}", metric) for n in budgets],
            label="dirty→clean")
        d = stat("dirty_only", metric)
        if d is not None:
            ax.axhline(d["mean"], color="gray", ls="--", label="dirty-only")
            ax.axhspan(d["ci"][0], d["ci"][1], color="gray", alpha=0.15)
        ax.set_xscale("log")
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("clean pairs")
        ax.set_ylabel(f"gold accuracy ({METRIC_NAMES[metric]})")
        ax.legend()
        ax.set_title(f"RM accuracy vs clean pairs, {METRIC_NAMES[metric]} (95% CI over seeds)", fontsize=9)
        ax = axes[row][1]
        base = stat(f"clean_only_{c['filter_pairs']}", metric)
        for kind, marker in (("easy", "o"), ("suspect", "s"), ("random", "^")):
            mine = sorted((x[kind], x["name"]) for x in single if x[kind])
            if mine:
                bar(ax, [0.0] + [f for f, _ in mine], [base] + [stat(f"filter_{n}", metric) for _, n in mine],
                    label=f"drop {kind}", marker=marker)
        for x in runs:
            if x not in single:
                bar(ax, [x["easy"] + x["suspect"]], [stat(f"filter_{x['name']}", metric)], ls="none", marker="*",
                    markersize=10, label=x["name"])
        ax.set_xlabel("fraction of the pool dropped")
        ax.set_ylabel(f"gold accuracy ({METRIC_NAMES[metric]})")
        ax.legend(fontsize=8)
        ax.set_title(f"Filtering {c['filter_pairs']} clean pairs, {METRIC_NAMES[metric]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- driver


def cells_key(args) -> str:
    settings = {k: getattr(args, k) for k in CELL_SETTINGS}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def run(args, save=lambda results: None) -> dict:
    import torch

    from trl_extras.testbed import task_module

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    tb = task_module(args.task)
    sft = tb.sft_policy(seed=0, progress=False)
    if sft is None:
        raise ValueError(f"--task {args.task!r} has no testbed SFT policy to build reward models on")
    cells_dir = Path(args.cells_dir) / f"{args.task}-{cells_key(args)}"
    results = {"config": vars(args), "cells_dir": str(cells_dir), "per_seed": []}
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", flush=True)

    log(f"cells in {cells_dir}")
    per_seed, data = {}, {}
    # phase-major: every seed's budget study first, so that a late kill costs filtering seeds, not the main result
    for phase in ("budgets", "filters"):
        for seed in [int(s) for s in args.seeds.split(",")]:
            data[seed] = data.get(seed) or seed_data(tb, args, seed)  # drawing the pairs takes seconds
            per_seed[seed] = run_seed(args, tb, seed, sft, cells_dir, log, (phase,), per_seed.get(seed), data[seed])
            results["per_seed"] = list(per_seed.values())
            results["aggregate"] = aggregate(results["per_seed"], vars(args))
            save(results)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return results


def main(argv=None):
    from trl_extras.testbed import TASKS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="sort_hard", choices=TASKS)
    p.add_argument("--budgets", default="100,300,1000", help="clean-pair budgets, comma-separated")
    p.add_argument("--dirty_pairs", type=int, default=1500)
    p.add_argument("--filter_pairs", type=int, default=1000, help="the filtering pool: one of --budgets")
    p.add_argument("--filter_runs", default="e0.1,e0.2,e0.4,s0.05,s0.1,s0.2,e0.2+s0.1,r0.2",
                   help="e<frac> easiest, s<frac> most suspect, r<frac> random (control); '+' combines e and s")
    p.add_argument("--eval_pairs", type=int, default=1000)
    p.add_argument("--dirty_epochs", type=float, default=1.0)
    p.add_argument("--clean_epochs", type=float, default=2.0)
    p.add_argument("--dirty_lr", type=float, default=1e-4)
    p.add_argument("--clean_lr", type=float, default=5e-5)
    p.add_argument("--flip_rate", type=float, default=0.1, help="share of flipped labels among clean pairs")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated; each seed redraws every pair")
    p.add_argument("--quick", action="store_true", help="tiny sizes and 2 seeds, to check the script runs")
    p.add_argument("--cells_dir", default=None, help="where each (seed, cell) result is kept (resume); default: "
                   "<testbed cache>/reward_experiments")
    p.add_argument("--output", default=str(RESULTS / "reward_experiments"))
    args = p.parse_args(argv)
    if args.quick:
        args.budgets, args.dirty_pairs, args.filter_pairs, args.eval_pairs = "16,32", 32, 32, 40
        args.filter_runs = "e0.25,s0.125,e0.25+s0.125,r0.25"
        args.dirty_epochs = args.clean_epochs = 1.0
        if args.seeds == p.get_default("seeds"):
            args.seeds = "0,1"
        if args.output == str(RESULTS / "reward_experiments"):
            args.output = os.path.join(tempfile.gettempdir(), "reward_experiments_quick")
    if str(args.filter_pairs) not in args.budgets.split(","):
        p.error(f"--filter_pairs ({args.filter_pairs}) must be one of --budgets ({args.budgets}): the clean-only "
                f"model of that budget is the filtering scorer")
    parse_filter_runs(args.filter_runs)  # fail before training on a bad spec
    if args.cells_dir is None:
        from trl_extras.testbed import default_cache_dir

        args.cells_dir = str(Path(default_cache_dir()) / "reward_experiments")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(results):  # after every seed, so an interrupted run keeps what it measured
        slim = {**results, "per_seed": [{k: v for k, v in s.items() if k != "cells"} | {"cells": {
            name: {k: v for k, v in cell.items() if k != "train_margins"} for name, cell in s["cells"].items()}}
            for s in results["per_seed"]]}
        out.with_suffix(".json").write_text(json.dumps(slim, indent=1))
        if results.get("aggregate", {}).get("methods"):
            out.with_suffix(".md").write_text(to_markdown(results))
            plot(results, out.with_suffix(".png"))

    results = run(args, save)
    save(results)
    if out.with_suffix(".md").exists():
        print(out.with_suffix(".md").read_text())
    return results


if __name__ == "__main__":
    main()

"""Over-optimization regimes on the ``sort_hard`` testbed (issue 13, items 2 and 3): Gao et al. 2022's curves with
learned proxies trained on N gold-labelled pairs, and Coste et al. 2023's ensembles (UWO, WCO) in that regime.

Setting (everything below is measured by this script; numbers go to the Markdown, none are typed in):

* Policy: the ``sort_hard`` SFT policy (``task_module("sort_hard").sft_policy(0)``), the same for every seed.
* Proxies: for seed ``s``, ``clean_pairs(max(N), flip_rate=0.25)`` drawn with seed ``7000 + s`` (25 % of labels
  flipped: finite-data errors that differ between members), nested: the first N pairs train the proxy of size N.
  Every reward model is the SFT policy with a new score head, trained by TRL's ``RewardTrainer`` (1 epoch).
  At ``--ensemble-n`` pairs K members differ by seed only (same N pairs, no bootstrap: Coste et al. found seeds
  alone at least as good), trained by :func:`trl_extras.rewards.ensemble.train_reward_ensemble` and standardized on
  the chosen/rejected answers of its training pairs; member 0 is the single proxy of that N. Other N: one model.
* Best-of-n (Gao et al.): per seed, m=64 T=1 samples for each of ``--num-prompts`` holdout prompts (a disjoint
  slice per seed), drawn once through :func:`trl_extras.modeling.generation.generate_rollouts`; for n = 1..64 the
  unbiased estimator :func:`trl_extras.core.best_of_n.expected_best_of_n` gives the expected gold and proxy of
  best-of-n, at ``d = sqrt(KL_bon(n))``, ``KL_bon = log n − (n − 1)/n``. Selectors: the single proxy of each N;
  at ``--ensemble-n`` also UWO ``mean − λ·var`` of the standardized members (λ swept) and WCO ``min``.
  "proxy" is always the single proxy's score standardized on the article's T=1 samples (the same yardstick for all).
* PPO (β=0 and the β comparison): :func:`goodhart.run_ppo` (this repo's PPOTrainer, exact KL, batch-normalized
  advantages) against the single proxy, UWO and WCO of the ``--ensemble-n`` ensemble; gold, proxy and exact KL to the
  SFT policy measured along training by the shared ``RewardMeasureCallback`` on fixed holdout prompts.
* Fits: ``gold(d) − gold(0) = d(α − β d)`` (best-of-n) and ``= d(α − β log d)`` (PPO), least squares without
  intercept (:func:`trl_extras.core.best_of_n.fit_best_of_n` / ``fit_rl``), per seed and on the seed-mean curve.

Everything is cached under ``--work-dir`` (reward models, samples, scores, one JSON per PPO run), so a rerun skips
what is done and a killed run loses little; the results are re-rendered after every finished piece.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/overoptimization.py --seeds 0 1 2
    .venv/bin/python benchmarks/overoptimization.py --quick        # smoke run (writes overoptimization_quick.*)

Writes ``benchmarks/results/overoptimization.{json,md,png}``. The committed results were made by processes sharing
one work dir (same RM/PPO settings, so the same cache), then one render of everything cached:

    P="--ppo-steps 48 --ppo-every 8 --ppo-lr 5e-4 --ppo-batch-size 32"
    overoptimization.py --seeds 0 1 2 $P --skip-ppo                          # best-of-n, seeds 0-2
    overoptimization.py --seeds 0 1 2 $P --only-ppo --ppo-beta-comparison    # PPO (waits for each seed's ensemble)
    overoptimization.py --seeds 3 4 --skip-ppo --output /tmp/bon34          # best-of-n, seeds 3-4
    overoptimization.py --seeds 0 1 2 $P --only-ppo --ppo-lambda 2 --output /tmp/lam2   # + UWO λ=2 under PPO
    for s in 3 4: overoptimization.py --seeds $s $P --only-ppo [then --ppo-lambda 2, then --ppo-beta-comparison]
    overoptimization.py --seeds 0 1 2 3 4 $P --ppo-beta-comparison --skip-ppo   # render everything cached
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

HERE = Path(__file__).parent
RESULTS = HERE / "results"
TASK = "sort_hard"
TABLE_NS = (1, 2, 4, 8, 16, 32, 64)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rm_config(output_dir: str, a, seed: int):
    import torch
    from trl import RewardConfig

    return RewardConfig(
        output_dir=output_dir, num_train_epochs=a.rm_epochs, learning_rate=a.rm_lr,
        per_device_train_batch_size=a.rm_batch_size, lr_scheduler_type="linear", max_length=256, logging_steps=50,
        save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(), bf16=False,
        gradient_checkpointing=False, disable_tqdm=True, seed=seed, data_seed=seed,
    )


def training_pairs(a, seed: int, n: int):
    from trl_extras.testbed import task_module

    tb = task_module(TASK)
    kw = {"bt_temperature": a.bt_temperature} if a.bt_temperature else {"flip_rate": a.flip_rate}
    pairs = tb.clean_pairs(max(a.ns), config=tb.TaskConfig(seed=0), seed=7000 + seed, **kw)
    return pairs.select(range(n)).select_columns(["id", "prompt", "chosen", "rejected"])


def train_single(sft_path: str, out: Path, a, seed: int, n: int) -> tuple[str, float]:
    """One proxy RM on the first ``n`` pairs (seed ``1000·seed``: the same as member 0 of an ensemble of that N)."""
    from trl import RewardTrainer

    if (out / "done.json").is_file():
        return str(out), json.loads((out / "done.json").read_text())["seconds"]
    t0 = time.perf_counter()
    trainer = RewardTrainer(model=sft_path, args=rm_config(str(out / "run"), a, 1000 * seed),
                            train_dataset=training_pairs(a, seed, n))
    trainer.train()
    trainer.save_model(str(out))
    seconds = time.perf_counter() - t0
    (out / "done.json").write_text(json.dumps({"seconds": seconds}))
    return str(out), seconds


def train_ensemble(sft_path: str, out: Path, a, seed: int, n: int):
    from trl_extras.rewards.ensemble import RewardEnsemble, train_reward_ensemble

    if (out / "ensemble_manifest.json").is_file():
        return RewardEnsemble.from_pretrained(out), json.loads((out / "seconds.json").read_text())["seconds"]
    t0 = time.perf_counter()
    ens = train_reward_ensemble(sft_path, training_pairs(a, seed, n), rm_config(str(out), a, 1000 * seed), k=a.k,
                                output_dir=out, calibration_size=a.calibration_size, progress=False)
    seconds = time.perf_counter() - t0
    (out / "seconds.json").write_text(json.dumps({"seconds": seconds}))
    return ens, seconds


def draw_samples(sft_path: str, work: Path, a, seed: int) -> dict:
    """m T=1 samples for each of this seed's holdout prompts, with their gold (cached)."""
    path = work / f"samples_seed{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_extras.modeling.generation import generate_rollouts
    from trl_extras.testbed import task_module

    tb = task_module(TASK)
    holdout = list(tb.prompt_dataset("holdout", tb.TaskConfig(seed=0))["prompt"])
    start = (seed * a.num_prompts) % len(holdout)
    prompts = (holdout[start:] + holdout[:start])[: a.num_prompts]
    model = AutoModelForCausalLM.from_pretrained(sft_path).eval()
    tok = AutoTokenizer.from_pretrained(sft_path)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    roll = generate_rollouts(model, tok, prompts, max_new_tokens=24, temperature=1.0, num_generations=a.m,
                             batch_size=512)
    gold = tb.gold_reward_fn(roll.prompts, roll.completions)
    out = {"prompts": prompts, "completions": list(roll.completions), "gold": gold, "m": a.m,
           "seconds": time.perf_counter() - t0}
    path.write_text(json.dumps(out))
    return out


def unique_scores(score_fn, prompts: list, completions: list):
    """Score each distinct (prompt, completion) once (T=1 samples of a sharp policy repeat a lot)."""
    import torch

    index, keys = {}, []
    for p, c in zip(prompts, completions):
        if (p, c) not in index:
            index[(p, c)] = len(keys)
            keys.append((p, c))
    with torch.no_grad():
        scores = score_fn([k[0] for k in keys], [k[1] for k in keys])  # (..., U)
    idx = torch.tensor([index[(p, c)] for p, c in zip(prompts, completions)])
    return scores[..., idx], len(keys)


def rm_accuracy(score_fn, seed: int, num_pairs: int) -> float:
    """Pairwise accuracy against gold on fresh noiseless pairs (gold ties dropped)."""
    import torch

    from trl_extras.testbed import task_module

    tb = task_module(TASK)
    pairs = tb.clean_pairs(num_pairs, flip_rate=0.0, config=tb.TaskConfig(seed=0), seed=4242 + seed)
    p = list(pairs["prompt"])
    with torch.no_grad():
        s = score_fn(p + p, list(pairs["chosen"]) + list(pairs["rejected"]))
    margin = s[..., : len(p)] - s[..., len(p):]
    return (margin > 0).float().mean(-1).tolist()


def score_seed(sft_path: str, work: Path, a, seed: int, samples: dict) -> dict:
    """Raw member scores of every N's proxy on this seed's samples (cached): ``{N: {"members": (K, P·m) lists,
    "calibration", "accuracy", "train_seconds"}}``."""
    path = work / f"scores_seed{seed}.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    for n in sorted(a.ns, key=lambda n: n != a.ensemble_n):  # the ensemble first: the PPO part needs it
        if str(n) in done:
            continue
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from trl_extras.rewards.scoring import score_with_reward_model

        t0 = time.perf_counter()
        if n == a.ensemble_n:
            ens, train_s = train_ensemble(sft_path, work / f"rm_seed{seed}_n{n}_k{a.k}", a, seed, n)
            fn = ens.raw_scores
            calibration = {"mean": ens.calibration["mean"], "std": ens.calibration["std"]}
        else:
            rm_path, train_s = train_single(sft_path, work / f"rm_seed{seed}_n{n}", a, seed, n)
            model = AutoModelForSequenceClassification.from_pretrained(rm_path, num_labels=1).eval()
            tok = AutoTokenizer.from_pretrained(rm_path)

            def fn(p, c, model=model, tok=tok):
                return score_with_reward_model(model, tok, p, c, 128)[None]

            calibration = None
        prompts = [p for p in samples["prompts"] for _ in range(samples["m"])]
        members, unique = unique_scores(fn, prompts, samples["completions"])
        acc = rm_accuracy(fn, seed, a.accuracy_pairs)
        done[str(n)] = {"members": members.tolist(), "calibration": calibration, "accuracy": acc,
                        "train_seconds": train_s, "unique_samples": unique,
                        "score_seconds": time.perf_counter() - t0 - (0 if calibration is None else 0)}
        path.write_text(json.dumps(done))
        log(f"seed {seed} N={n}: accuracy vs gold {[round(x, 3) for x in acc]}, trained {train_s:.0f}s, "
            f"{unique} distinct samples")
    return done


# ---------------------------------------------------------------------------------------------------------------
# Best-of-n curves
# ---------------------------------------------------------------------------------------------------------------


def selectors(entry: dict, lambdas) -> dict:
    """``{name: (P·m,) selecting score}``: ``single`` (member 0), and with K > 1 standardized members: ``mean``,
    ``UWO λ=…``, ``WCO``."""
    import torch

    from trl_extras.core.ensemble import penalize, standardize_members

    members = torch.tensor(entry["members"])
    out = {"single": members[0]}
    if members.shape[0] > 1:
        z = standardize_members(members, entry["calibration"]["mean"], entry["calibration"]["std"])
        for lam in lambdas:
            out[f"UWO λ={lam:g}"] = penalize(z, "variance", lam)
        out["WCO"] = penalize(z, "min")
    return out


def load_bon(work: Path, a) -> tuple[dict, dict]:
    """``({seed: bon_seed(...)}, {N: [per-seed accuracies]})`` from the cache, once every seed has every N scored
    (``({}, {})`` before that)."""
    per_seed, accuracy = {}, {}
    a._compute = {"rm_train_s": 0.0, "sampling_s": 0.0}
    for seed in a.seeds:
        samples_path, scores_path = work / f"samples_seed{seed}.json", work / f"scores_seed{seed}.json"
        if not (samples_path.is_file() and scores_path.is_file()):
            return {}, {}
        scores = json.loads(scores_path.read_text())
        if any(str(n) not in scores for n in a.ns):
            return {}, {}
        for n in a.ns:
            accuracy.setdefault(str(n), []).append(scores[str(n)]["accuracy"])
            a._compute["rm_train_s"] += scores[str(n)]["train_seconds"]
        samples = json.loads(samples_path.read_text())
        a._compute["sampling_s"] += samples["seconds"]
        per_seed[str(seed)] = bon_seed(samples, {str(n): scores[str(n)] for n in a.ns}, a)
    return per_seed, accuracy


def bon_seed(samples: dict, scores: dict, a) -> dict:
    """Per N and selector: gold and proxy of best-of-n for n = 1..m (seed means over prompts)."""
    import torch

    from trl_extras.core.best_of_n import best_of_n_curve

    m = samples["m"]
    P = len(samples["prompts"])
    gold = torch.tensor(samples["gold"], dtype=torch.float64).view(P, m)
    ns = list(range(1, m + 1))
    out = {}
    for n_pairs, entry in scores.items():
        proxy = torch.tensor(entry["members"][0], dtype=torch.float64)
        proxy_z = ((proxy - proxy.mean()) / proxy.std()).view(P, m)
        curves = {}
        for name, sel in selectors(entry, a.lambdas).items():
            sel = sel.view(P, m)
            curves[name] = {
                "gold": best_of_n_curve(sel, gold, ns).mean(1).tolist(),
                "proxy": best_of_n_curve(sel, proxy_z, ns).mean(1).tolist(),
            }
        out[n_pairs] = curves
    return out


def _ci(values):
    from trl_extras.core.stats import mean_ci

    finite = [v for v in values if math.isfinite(v)]  # a run whose gold never rose has no "share" of its gain
    if not finite:
        return {"mean": float("nan"), "ci": None, "values": values}
    if len(finite) < 2:
        return {"mean": finite[0], "ci": None, "values": values}
    mean, low, high = mean_ci(finite)
    return {"mean": mean, "ci": [low, high], "values": values, "num_finite": len(finite)}


def summarize_bon(per_seed: dict, a) -> dict:
    """Seed-mean curves with CIs, Gao fits, and the two goals."""
    from trl_extras.core.best_of_n import best_of_n_kl, fit_best_of_n

    seeds = sorted(per_seed, key=int)
    m = a.m
    d = [math.sqrt(best_of_n_kl(n)) for n in range(1, m + 1)]
    out = {"d": d, "by_n_pairs": {}}
    for n_pairs in [str(n) for n in a.ns]:
        names = per_seed[seeds[0]][n_pairs].keys()
        block = {}
        for name in names:
            gold = [per_seed[s][n_pairs][name]["gold"] for s in seeds]
            proxy = [per_seed[s][n_pairs][name]["proxy"] for s in seeds]
            mean_gold = [sum(g[i] for g in gold) / len(gold) for i in range(m)]
            mean_proxy = [sum(p[i] for p in proxy) / len(proxy) for i in range(m)]
            peak = max(range(m), key=lambda i: mean_gold[i])
            fits = [fit_best_of_n(d, [x - g[0] for x in g]) for g in gold]
            fit_mean = fit_best_of_n(d, [x - mean_gold[0] for x in mean_gold])
            block[name] = {
                "gold": {str(n): _ci([g[n - 1] for g in gold]) for n in TABLE_NS if n <= m},
                "proxy": {str(n): _ci([p[n - 1] for p in proxy]) for n in TABLE_NS if n <= m},
                "mean_gold": mean_gold, "mean_proxy": mean_proxy,
                "gold_per_seed": gold,
                "peak_n": peak + 1, "peak_kl": best_of_n_kl(peak + 1),
                "rise": _ci([g[peak] - g[0] for g in gold]),
                "fall": _ci([g[peak] - g[m - 1] for g in gold]),
                "fit_mean_curve": fit_mean._asdict(),
                "fit_alpha": _ci([f.alpha for f in fits]), "fit_beta": _ci([f.beta for f in fits]),
                "fit_r2": _ci([f.r2 for f in fits]),
            }
        out["by_n_pairs"][n_pairs] = block
    # Gao goal: the single proxy rises then falls beyond noise (the CI over seeds of both differences above 0)
    out["gao_goal"] = {}
    for n_pairs, block in out["by_n_pairs"].items():
        s = block["single"]
        held = all(x["ci"] is not None and x["ci"][0] > 0 for x in (s["rise"], s["fall"]))
        out["gao_goal"][n_pairs] = {"held": held, "peak_n": s["peak_n"], "rise": s["rise"], "fall": s["fall"]}
    out["coste_goal"] = coste_goal_bon(out["by_n_pairs"][str(a.ensemble_n)], a)
    return out


def coste_goal_bon(block: dict, a) -> dict:
    """At twice the single proxy's peak KL: the single's lost share of its peak gain, each ensemble selector's kept
    share of its own peak gain (gains over n=1, on the seed-mean curves; per-seed shares with CIs)."""
    from trl_extras.core.best_of_n import best_of_n_kl

    m = a.m
    single = block["single"]
    target = 2 * single["peak_kl"]
    n2 = next((n for n in range(1, m + 1) if best_of_n_kl(n) >= target), None)
    out = {"single_peak_n": single["peak_n"], "single_peak_kl": single["peak_kl"], "target_kl": target, "n_at_2x": n2}
    if n2 is None or single["peak_n"] == 1:
        out["testable"] = False
        out["why"] = ("the single proxy's gold peaks at n=1 (no gain to lose)" if single["peak_n"] == 1 else
                      f"2× the single proxy's peak KL ({target:.2f} nats) is beyond best-of-{m}")
        return out
    out["testable"] = True

    def shares(curve, peak_idx):
        gain_peak = curve[peak_idx] - curve[0]
        gain_2x = curve[n2 - 1] - curve[0]
        return gain_peak, gain_2x

    gp, g2 = shares(single["mean_gold"], single["peak_n"] - 1)
    out["single"] = {"peak_gain": gp, "gain_at_2x": g2, "lost_share": 1 - g2 / gp if gp > 0 else float("nan"),
                     "lost_share_per_seed": _ci([1 - (g[n2 - 1] - g[0]) / (g[single["peak_n"] - 1] - g[0])
                                                 if g[single["peak_n"] - 1] > g[0] else float("nan")
                                                 for g in single["gold_per_seed"]])}
    out["single"]["loses_ge_30pct"] = out["single"]["lost_share"] >= 0.30
    out["ensembles"] = {}
    for name, sel in block.items():
        if name == "single":
            continue
        pk = max(range(m), key=lambda i: sel["mean_gold"][i])
        gp_e, g2_e = shares(sel["mean_gold"], pk)
        kept = g2_e / gp_e if gp_e > 0 else float("nan")
        out["ensembles"][name] = {"peak_n": pk + 1, "peak_gain": gp_e, "gain_at_2x": g2_e, "kept_share": kept,
                                  "keeps_ge_90pct": bool(kept >= 0.90),
                                  "gold_at_2x_minus_single_peak": sel["mean_gold"][n2 - 1] - single["mean_gold"][single["peak_n"] - 1]}
    for name, e in out["ensembles"].items():
        paired = list(zip(block[name]["gold_per_seed"], single["gold_per_seed"]))
        e["diff_vs_single_at_2x"] = _ci([g[n2 - 1] - h[n2 - 1] for g, h in paired])
        e["diff_vs_single_at_m"] = _ci([g[m - 1] - h[m - 1] for g, h in paired])
    out["held_for"] = [k for k, v in out["ensembles"].items() if v["keeps_ge_90pct"] and out["single"]["loses_ge_30pct"]]
    return out


# ---------------------------------------------------------------------------------------------------------------
# PPO
# ---------------------------------------------------------------------------------------------------------------


def ppo_runs(a, phase: int) -> list[tuple[str, str, float, float]]:
    """``(name, selector, λ, β)`` of the PPO runs of ``phase`` 0 (β=0: single, UWO, WCO) or 1 (small β + UWO vs
    large β + single)."""
    if phase == 0:
        return [("single β=0", "single", 0.0, 0.0), (f"UWO λ={a.ppo_lambda:g} β=0", "variance", a.ppo_lambda, 0.0),
                ("WCO β=0", "min", 0.0, 0.0)]
    return [(f"UWO λ={a.ppo_lambda:g} β={a.small_beta:g}", "variance", a.ppo_lambda, a.small_beta),
            (f"single β={a.large_beta:g}", "single", 0.0, a.large_beta)]


def wait_for_ensemble(work: Path, a, seed: int, timeout_s: float = 3600) -> None:
    """With ``--only-ppo`` another process (the best-of-n part) trains the ensembles: wait for its manifest."""
    manifest = work / f"rm_seed{seed}_n{a.ensemble_n}_k{a.k}" / "ensemble_manifest.json"
    t0 = time.perf_counter()
    while not manifest.is_file() and time.perf_counter() - t0 < timeout_s:
        time.sleep(10)


def run_ppo_seed(sft_path: str, work: Path, a, seed: int, on_done, phase: int = 0) -> None:
    sys.path.insert(0, str(HERE))
    import goodhart
    import torch
    from transformers import AutoModelForCausalLM

    from trl_extras.callbacks.reward_measure import RewardMeasureCallback
    from trl_extras.rewards.functions import RewardFunctions
    from trl_extras.testbed import task_module

    tb = task_module(TASK)
    if a.only_ppo:
        wait_for_ensemble(work, a, seed)
    ens, _ = train_ensemble(sft_path, work / f"rm_seed{seed}_n{a.ensemble_n}_k{a.k}", a, seed, a.ensemble_n)
    single = goodhart.SingleProxy(ens)
    sft_model = AutoModelForCausalLM.from_pretrained(sft_path).eval()
    holdout = list(tb.prompt_dataset("holdout", tb.TaskConfig(seed=0))["prompt"])[: a.ppo_num_prompts]
    train_prompts = tb.prompt_dataset("train", tb.TaskConfig(seed=0))
    for name, mode, lam, beta in ppo_runs(a, phase):
        path = work / "ppo" / f"seed{seed}_{name.replace(' ', '_').replace('=', '').replace('λ', 'lam').replace('β', 'beta')}.json"
        if path.is_file():
            continue
        if mode == "single":
            reward = single
        else:
            reward = copy.copy(ens)
            reward.penalty, reward.coef = mode, lam
            reward.__name__ = f"reward_ensemble_{mode}"
        extra = {"ensemble_std": RewardFunctions(goodhart.ensemble_std_fn(ens))}
        # the shared measuring callback; the sampling stream differs between seeds (so the seed CIs include the
        # measurement noise) and is shared by the runs of one seed (paired comparisons)
        cb = RewardMeasureCallback(
            {"gold": tb.gold_reward_fn, "proxy": RewardFunctions(single), **extra}, holdout,
            every_n_steps=a.ppo_every, ref_model=sft_model, max_new_tokens=24, temperature=1.0,
            seed=1000 + 7919 * seed, prefix="overopt",
        )
        ns = argparse.Namespace(batch_size=a.ppo_batch_size, num_mini_batches=a.ppo_num_mini_batches,
                                num_ppo_epochs=a.ppo_num_epochs, steps=a.ppo_steps, lr=a.ppo_lr, every=a.ppo_every,
                                kl_coef=beta, seed=seed)
        log(f"PPO seed {seed}: {name}")
        torch.manual_seed(seed)
        res = goodhart.run_ppo(name, reward, sft_path, train_prompts, cb, work / "ppo_tmp", ns)
        res.update({"seed": seed, "selector": mode, "lambda": lam, "beta": beta})
        res.pop("train_logs", None)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res))
        log(f"  peak gold {res['peak_gold']}, final {res['final']}, {res['train_seconds']:.0f}s")
        on_done()


def load_ppo(work: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((work / "ppo").glob("seed*.json"))]


def summarize_ppo(runs: list[dict], a) -> dict:
    from trl_extras.core.best_of_n import fit_rl

    by_name: dict = {}
    for r in runs:
        by_name.setdefault(r["name"], []).append(r)
    out = {"by_name": {}}
    for name, rs in by_name.items():
        rows = []
        for r in rs:
            pts = r["points"]
            g0 = pts[0]["gold"]
            fit = fit_rl([math.sqrt(max(p["kl"], 0.0)) for p in pts], [p["gold"] - g0 for p in pts])
            pk = max(pts, key=lambda p: p["gold"])
            rows.append({"seed": r["seed"], "gold0": g0, "peak_gold": pk["gold"], "peak_kl": pk["kl"],
                         "peak_step": pk["step"], "final_gold": pts[-1]["gold"], "final_kl": pts[-1]["kl"],
                         "final_proxy": pts[-1]["proxy"], "rise": pk["gold"] - g0, "fall": pk["gold"] - pts[-1]["gold"],
                         "fit": fit._asdict(), "train_seconds": r["train_seconds"],
                         "std0": pts[0].get("ensemble_std", float("nan")),
                         "std_final": pts[-1].get("ensemble_std", float("nan"))})
        summary = {k: _ci([row[k] for row in rows]) for k in ("gold0", "peak_gold", "peak_kl", "final_gold",
                                                               "final_kl", "final_proxy", "rise", "fall",
                                                               "std0", "std_final")}
        summary["fit_alpha"] = _ci([row["fit"]["alpha"] for row in rows])
        summary["fit_beta"] = _ci([row["fit"]["beta"] for row in rows])
        summary["fit_r2"] = _ci([row["fit"]["r2"] for row in rows])
        out["by_name"][name] = {"seeds": [row["seed"] for row in rows], "rows": rows, "summary": summary}
    order = [r[0] for phase in (0, 1) for r in ppo_runs(a, phase)]
    out["by_name"] = dict(sorted(out["by_name"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))
    small, large = (r[0] for r in ppo_runs(a, 1))
    pairs = {r["seed"]: r for r in runs if r["name"] == small}
    pairs = [(pairs[r["seed"]], r) for r in runs if r["name"] == large and r["seed"] in pairs]
    if pairs:
        def best(r):
            return max(p["gold"] for p in r["points"])

        out["beta_comparison"] = {
            "small": small, "large": large, "seeds": [s_["seed"] for s_, _ in pairs],
            "peak_gold_diff": _ci([best(s_) - best(l_) for s_, l_ in pairs]),
            "final_gold_diff": _ci([s_["points"][-1]["gold"] - l_["points"][-1]["gold"] for s_, l_ in pairs]),
            "final_kl": {"small": _ci([s_["points"][-1]["kl"] for s_, _ in pairs]),
                         "large": _ci([l_["points"][-1]["kl"] for _, l_ in pairs])},
        }
    single = out["by_name"].get("single β=0")
    if single:
        # the peak step is picked on the seed-mean curve (the max of each seed's own noisy points would bias the
        # rise upwards), then the rise and fall are per-seed differences at that step
        curves = [r["points"] for r in runs if r["name"] == "single β=0"]
        steps = [p["step"] for p in curves[0]]
        curves = [c for c in curves if [p["step"] for p in c] == steps]
        mean = [sum(c[i]["gold"] for c in curves) / len(curves) for i in range(len(steps))]
        k = max(range(len(steps)), key=lambda i: mean[i])
        rise = _ci([c[k]["gold"] - c[0]["gold"] for c in curves])
        fall = _ci([c[k]["gold"] - c[-1]["gold"] for c in curves])
        out["gao_goal"] = {"held": all(x["ci"] is not None and x["ci"][0] > 0 for x in (rise, fall)),
                           "peak_step": steps[k], "rise": rise, "fall": fall, "seeds": single["seeds"]}
        out["coste_goal"] = coste_goal_ppo(runs, a)
    return out


def coste_goal_ppo(runs: list[dict], a) -> dict:
    """Per seed: the single run's peak KL; at the first measured point of each run with KL >= 2× that (or its last
    point if it never gets there), the share of its own peak gain kept, and the single run's lost share."""
    out = {}
    seeds = sorted({r["seed"] for r in runs})
    for seed in seeds:
        mine = {r["name"]: r for r in runs if r["seed"] == seed and r["beta"] == 0}
        if "single β=0" not in mine:
            continue
        sp = mine["single β=0"]["points"]
        g0 = sp[0]["gold"]
        pk = max(sp, key=lambda p: p["gold"])
        target = 2 * pk["kl"]
        row = {"single_peak_kl": pk["kl"], "target_kl": target}
        if pk["step"] == 0:
            row["note"] = "the single run's gold peaks at step 0: no gain to lose, not testable"
        for name, r in mine.items():
            pts = r["points"]
            peak = max(pts, key=lambda p: p["gold"])
            at = next((p for p in pts if p["kl"] >= target), pts[-1])
            gain_peak, gain_at = peak["gold"] - g0, at["gold"] - g0
            row[name] = {"peak_gold": peak["gold"], "gold_at_2x": at["gold"], "kl_at": at["kl"],
                         "reached_2x": at["kl"] >= target,
                         "kept_share": gain_at / gain_peak if gain_peak > 0 else float("nan")}
        out[str(seed)] = row
    verdict = {}
    for name in {n for row in out.values() for n, v in row.items() if isinstance(v, dict) and n != "single β=0"}:
        rows = [row for row in out.values() if name in row and "note" not in row]
        lost = [1 - row["single β=0"]["kept_share"] for row in rows]
        kept = [row[name]["kept_share"] for row in rows]
        held = [lo >= 0.30 and ke >= 0.90 for lo, ke in zip(lost, kept)]  # NaN (no gain to keep) → not held
        reached = [row[name]["reached_2x"] for row in rows]
        verdict[name] = {"seeds_held": sum(held), "seeds": len(rows),
                         "seeds_held_at_2x": sum(h and r for h, r in zip(held, reached)),
                         "single_lost_share": _ci(lost) if lost else None, "kept_share": _ci(kept) if kept else None}
    return {"per_seed": out, "verdict": verdict}


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


def fmt(x, digits=3) -> str:
    if x is None or not math.isfinite(x["mean"]):
        return "–"
    if x["ci"] is None:
        return f"{x['mean']:.{digits}f}"
    return f"{x['mean']:.{digits}f} [{x['ci'][0]:.{digits}f}, {x['ci'][1]:.{digits}f}]"


def render(result: dict) -> str:
    a = result["config"]
    table_ns = [n for n in TABLE_NS if n <= a["m"]]
    bon = result.get("bon")
    lines = [
        "# Over-optimization on `sort_hard`: Gao et al.'s curves with learned proxies, Coste et al.'s ensembles",
        "",
        f"Command: `{result['command']}`. Seeds {a['seeds']} for best-of-n, "
        f"{a['ppo_seeds'] if a['ppo_seeds'] is not None else a['seeds']} for PPO (a seed redraws the RM training pairs, the RM inits and "
        f"data order, the holdout prompt slice and sampling, and the PPO run); the SFT policy is the same for all "
        f"(`task_module('sort_hard').sft_policy(0)`). Wall time {result['total_seconds']:.0f} s "
        f"(this invocation; cached pieces from earlier invocations are reused).",
        "",
        "Measured compute of the cached pieces (2 shared CPU cores, one thread per process): "
        + ", ".join(f"{k.replace('_s', '').replace('_', ' ')} {v:.0f} s" for k, v in result.get("compute", {}).items())
        + ".",
        "",
        f"Proxy RMs: SFT policy + new head, TRL `RewardTrainer`, {a['rm_epochs']:g} epoch, lr {a['rm_lr']:g}, batch "
        f"{a['rm_batch_size']}, on the first N of `clean_pairs` with "
        + (f"Bradley–Terry label noise τ={a['bt_temperature']}" if a["bt_temperature"] else
           f"{a['flip_rate']:.0%} flipped labels")
        + f", N ∈ {a['ns']}. At N={a['ensemble_n']}: K={a['k']} members differing by seed only (same pairs, no "
        "bootstrap), standardized on the chosen/rejected answers of "
        f"{a['calibration_size']} training pairs; member 0 = the single proxy.",
        "",
    ]
    if result.get("rm_accuracy"):
        lines += ["RM pairwise accuracy against gold on fresh noiseless pairs (mean over seeds; ensemble: each member):",
                  "", "| N | accuracy |", "|---:|---|"]
        for n, acc in result["rm_accuracy"].items():
            lines.append(f"| {n} | {acc} |")
        lines.append("")
    if bon:
        lines += [
            f"## Best-of-n (n = 1…{a['m']}), {a['num_prompts']} holdout prompts × m={a['m']} T=1 samples per seed",
            "",
            "Unbiased estimator (Gao et al., appendix): the sample of proxy rank i is best-of-n with probability "
            "C(i−1, n−1)/C(m, n). d = sqrt(KL_bon), KL_bon = log n − (n−1)/n. Gold: mean over prompts, then mean "
            "[95% t-interval] over seeds. Proxy: the single proxy's score standardized on the article's T=1 samples.",
            "",
            "### Single proxy per N: gold (proxy) by n",
            "",
            "| N | " + " | ".join(f"n={n} (d={math.sqrt(math.log(n) - (n - 1) / n):.2f})" for n in table_ns) + " |",
            "|---:|" + "---|" * len(table_ns),
        ]
        for n_pairs, block in bon["by_n_pairs"].items():
            s = block["single"]
            lines.append(f"| {n_pairs} | " + " | ".join(
                f"{fmt(s['gold'][str(n)])} ({s['proxy'][str(n)]['mean']:+.2f})" for n in table_ns) + " |")
        lines += ["", "### Gao et al.'s best-of-n form gold(d) − gold(0) = d(α − β d), single proxy", "",
                  "| N | α (per-seed fits) | β | R² | fit of the seed-mean curve: α, β, R² | peak n (KL) | rise to peak | "
                  "fall from peak to n=m | rises then falls beyond noise |",
                  "|---:|---|---|---|---|---|---|---|---|"]
        for n_pairs, block in bon["by_n_pairs"].items():
            s = block["single"]
            fm = s["fit_mean_curve"]
            g = bon["gao_goal"][n_pairs]
            lines.append(f"| {n_pairs} | {fmt(s['fit_alpha'])} | {fmt(s['fit_beta'])} | {fmt(s['fit_r2'])} | "
                         f"{fm['alpha']:.3f}, {fm['beta']:.3f}, {fm['r2']:.3f} | {s['peak_n']} ({s['peak_kl']:.2f}) | "
                         f"{fmt(s['rise'])} | {fmt(s['fall'])} | {'held' if g['held'] else 'did not hold'} |")
        block = bon["by_n_pairs"][str(a["ensemble_n"])]
        lines += ["", f"### Ensembles at N={a['ensemble_n']} (K={a['k']}): gold by n", "",
                  "| selector | " + " | ".join(f"n={n}" for n in table_ns) + " | peak n | fit α, β, R² (mean curve) |",
                  "|---|" + "---|" * (len(table_ns) + 2)]
        for name, s in block.items():
            fm = s["fit_mean_curve"]
            lines.append(f"| {name} | " + " | ".join(fmt(s["gold"][str(n)]) for n in table_ns)
                         + f" | {s['peak_n']} | {fm['alpha']:.3f}, {fm['beta']:.3f}, {fm['r2']:.3f} |")
        c = bon["coste_goal"]
        lines += ["", "### Coste et al.'s goal under best-of-n", ""]
        if not c["testable"]:
            lines.append(f"Not testable: {c['why']}.")
        else:
            sg = c["single"]
            lines += [
                f"Single proxy peaks at n={c['single_peak_n']} (KL {c['single_peak_kl']:.2f}); 2× that KL is "
                f"{c['target_kl']:.2f}, first reached at n={c['n_at_2x']}. There the single proxy keeps "
                f"{sg['gain_at_2x']:+.3f} of its {sg['peak_gain']:+.3f} peak gain: lost share {sg['lost_share']:.0%} "
                f"(per seed {fmt(sg['lost_share_per_seed'], 2)}) → loses ≥ 30%: "
                f"{'yes' if sg['loses_ge_30pct'] else 'no'}.",
                "",
                "| selector | peak n | peak gain | gain at 2× single's peak KL | kept share | keeps ≥ 90% | gold at 2× − single's peak gold "
                f"| gold − single's, paired by seed, at n={c['n_at_2x']} | same at n={a['m']} |",
                "|---|---:|---|---|---|---|---|---|---|",
            ]
            for name, e in c["ensembles"].items():
                lines.append(f"| {name} | {e['peak_n']} | {e['peak_gain']:+.3f} | {e['gain_at_2x']:+.3f} | "
                             f"{e['kept_share']:.0%} | {'yes' if e['keeps_ge_90pct'] else 'no'} | "
                             f"{e['gold_at_2x_minus_single_peak']:+.3f} | {fmt(e['diff_vs_single_at_2x'])} | "
                             f"{fmt(e['diff_vs_single_at_m'])} |")
            lines += ["", "Goal (single loses ≥ 30% and the penalized ensemble keeps ≥ 90% at 2× the single's peak KL): "
                      + (f"**held** for {', '.join(c['held_for'])}." if c["held_for"] else "**did not hold**.")]
        lines.append("")
    ppo = result.get("ppo")
    if ppo and ppo.get("by_name"):
        lines += [
            f"## PPO against the N={a['ensemble_n']} proxies",
            "",
            f"PPOTrainer from the SFT policy, exact KL, batch-normalized advantages, lr {a['ppo_lr']:g}, batch "
            f"{a['ppo_batch_size']}, {a['ppo_num_epochs']} epochs × {a['ppo_num_mini_batches']} minibatches per "
            f"rollout, {a['ppo_steps']} optimizer steps, max 24 new tokens, T=1. Measured every {a['ppo_every']} "
            f"steps on {a['ppo_num_prompts']} holdout prompts (one T=1 sample each): gold, proxy (standardized single "
            "proxy), KL(π‖SFT) summed per answer (exact). Per run: mean [95% t-interval] over the seeds listed.",
            "",
            "| run | seeds | gold at step 0 | peak gold | KL at peak | final gold | final KL | final proxy | "
            "rise to own peak | fall own peak→final | RL fit α | β | R² | members' std, step 0 → final |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in ppo["by_name"].items():
            s = r["summary"]
            lines.append(f"| {name} | {r['seeds']} | {fmt(s['gold0'])} | {fmt(s['peak_gold'])} | {fmt(s['peak_kl'], 2)} | "
                         f"{fmt(s['final_gold'])} | {fmt(s['final_kl'], 2)} | {fmt(s['final_proxy'], 2)} | "
                         f"{fmt(s['rise'])} | {fmt(s['fall'])} | {fmt(s['fit_alpha'])} | {fmt(s['fit_beta'])} | "
                         f"{fmt(s['fit_r2'], 2)} | {s['std0']['mean']:.2f} → {fmt(s['std_final'], 2)} |")
        if "gao_goal" in ppo:
            g = ppo["gao_goal"]
            lines += ["", f"Gao goal under PPO (single proxy's gold rises then falls, CIs over seeds {g['seeds']} above "
                      f"0; peak step {g['peak_step']} picked on the seed-mean curve, then per-seed differences): rise "
                      f"{fmt(g['rise'])}, fall {fmt(g['fall'])} → "
                      f"**{'held' if g['held'] else 'did not hold'}**"
                      + (" (fewer than 2 seeds: no interval)." if len(g["seeds"]) < 2 else ".")]
            lines += ["", "Coste goal under PPO, per seed (at the first point with KL ≥ 2× the single run's peak KL, or "
                      "the run's last point if it never got there):", "",
                      "| seed | single peak KL | run | peak gold | gold there | KL there | reached 2× | kept share of peak gain |",
                      "|---|---|---|---|---|---|---|---|"]
            for seed, row in ppo["coste_goal"]["per_seed"].items():
                if "note" in row:
                    lines.append(f"| {seed} | {row['single_peak_kl']:.2f} | – | {row['note']} | | | | |")
                    continue
                for name, v in row.items():
                    if isinstance(v, dict):
                        lines.append(f"| {seed} | {row['single_peak_kl']:.2f} | {name} | {v['peak_gold']:.3f} | "
                                     f"{v['gold_at_2x']:.3f} | {v['kl_at']:.2f} | {'yes' if v['reached_2x'] else 'no'} | "
                                     + (f"{v['kept_share']:.0%} |" if math.isfinite(v["kept_share"]) else "– (never rose) |"))
            lines += ["", "| run | single β=0 lost share of its peak gain at 2× its peak KL | this run's kept share there | "
                      "seeds where single lost ≥ 30% and this run kept ≥ 90% (of which the run reached 2× the KL) |",
                      "|---|---|---|---|"]
            for name, v in sorted(ppo["coste_goal"]["verdict"].items()):
                lines.append(f"| {name} | {fmt(v['single_lost_share'], 2)} | {fmt(v['kept_share'], 2)} | "
                             f"{v['seeds_held']}/{v['seeds']} ({v['seeds_held_at_2x']}) |")
        bc = ppo.get("beta_comparison")
        if bc:
            lines += ["", f"Small β + ensemble ({bc['small']}) minus large β + single ({bc['large']}), paired by seed "
                      f"{bc['seeds']}: peak gold {fmt(bc['peak_gold_diff'])}, final gold {fmt(bc['final_gold_diff'])} "
                      f"(final KL {fmt(bc['final_kl']['small'], 2)} vs {fmt(bc['final_kl']['large'], 2)})."]
        else:
            lines += ["", "Small β + ensemble vs large β + single: not run in this budget."]
        lines.append("")
    gh = result.get("goodhart")
    if gh:
        lines += [
            "## Contrast: the shared-bias regime (`goodhart.md`, not rerun here)",
            "",
            f"`benchmarks/goodhart.py` trains K={gh['k']} proxies on DIRTY labels from one biased heuristic labeller: "
            f"every member learns the same bias. There PPO (β=0) against the single proxy went from gold "
            f"{gh['single_gold0']:.3f} to {gh['single_final']:.3f}, and against the variance-penalized ensemble to "
            f"{gh['penalized_final']:.3f}; the members' disagreement (std) shrank from {gh['std0']:.3f} to "
            f"{gh['std_final']:.3f} as the policy learned the shared hack, so the penalty had nothing to bite on. "
            "Here the members' errors come from finite, noisy data and differ between members"
            + (f"; under PPO β=0 against the single proxy their std went from "
               f"{ppo['by_name']['single β=0']['summary']['std0']['mean']:.2f} to "
               f"{fmt(ppo['by_name']['single β=0']['summary']['std_final'], 2)} (standardized scale)."
               if ppo and "single β=0" in ppo.get("by_name", {}) else "."),
            "",
        ]
    lines += ["![curves](overoptimization.png)", ""]
    return "\n".join(lines)


def goodhart_contrast() -> dict | None:
    path = RESULTS / "goodhart.json"
    if not path.is_file():
        return None
    g = json.loads(path.read_text())
    runs = {r["name"]: r for r in g["runs"]}
    if "single" not in runs or "penalized" not in runs:
        return None
    pts = runs["penalized"]["points"]
    return {"k": g["config"]["k"], "single_gold0": runs["single"]["points"][0]["gold"],
            "single_final": runs["single"]["final"]["gold"], "penalized_final": runs["penalized"]["final"]["gold"],
            "std0": pts[0].get("ensemble_std", float("nan")), "std_final": pts[-1].get("ensemble_std", float("nan"))}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.4))
    bon = result.get("bon")
    if bon:
        d = bon["d"]
        for n_pairs, block in bon["by_n_pairs"].items():
            s = block["single"]
            axes[0].plot(d, s["mean_gold"], label=f"N={n_pairs}")
            axes[1].plot(d, s["mean_proxy"], label=f"N={n_pairs}")
        axes[0].set_title("best-of-n gold, single proxy (seed mean)")
        axes[1].set_title("best-of-n proxy (z on T=1 samples), single proxy")
        axes[1].set_ylabel("proxy z")
        for name, s in bon["by_n_pairs"][str(result["config"]["ensemble_n"])].items():
            axes[2].plot(d, s["mean_gold"], label=name, lw=2.5 if name == "single" else 1.2)
        axes[2].set_title(f"best-of-n gold, N={result['config']['ensemble_n']}: single vs ensembles")
        for ax in axes[:3]:
            ax.set_xlabel("d = sqrt(KL_bon)")
    ppo = result.get("ppo_runs") or []
    colors = {}
    for r in ppo:
        c = colors.setdefault(r["name"], f"C{len(colors)}")
        x = [math.sqrt(max(p["kl"], 0.0)) for p in r["points"]]
        axes[3].plot(x, [p["gold"] for p in r["points"]], "o-", ms=3, color=c,
                     label=r["name"] if sum(q["name"] == r["name"] for q in ppo[: ppo.index(r) + 1]) == 1 else None)
    axes[3].set_title("PPO gold vs sqrt(KL to SFT), one line per seed")
    axes[3].set_xlabel("sqrt(KL), nats^½")
    for ax in axes:
        ax.grid(alpha=0.3)
        if not ax.get_ylabel():
            ax.set_ylabel("gold (holdout, T=1)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--ns", nargs="*", type=int, default=[150, 500, 1500], help="proxy training pairs N")
    parser.add_argument("--ensemble-n", type=int, default=500, help="the N whose proxy is a K-member ensemble")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--flip-rate", type=float, default=0.25)
    parser.add_argument("--bt-temperature", type=float, default=None, help="Bradley–Terry label noise instead of flips")
    parser.add_argument("--rm-lr", type=float, default=5e-4)
    parser.add_argument("--rm-epochs", type=float, default=1.0)
    parser.add_argument("--rm-batch-size", type=int, default=8)
    parser.add_argument("--calibration-size", type=int, default=256)
    parser.add_argument("--accuracy-pairs", type=int, default=200)
    parser.add_argument("--num-prompts", type=int, default=64, help="holdout prompts per seed for best-of-n")
    parser.add_argument("--m", type=int, default=64, help="samples per prompt (best-of-n up to n=m)")
    parser.add_argument("--lambdas", nargs="*", type=float, default=[0.0, 0.1, 0.5, 1.0, 2.0])
    parser.add_argument("--ppo-seeds", nargs="*", type=int, default=None, help="default: --seeds")
    parser.add_argument("--ppo-lambda", type=float, default=0.5)
    parser.add_argument("--ppo-steps", type=int, default=48)
    parser.add_argument("--ppo-every", type=int, default=8)
    parser.add_argument("--ppo-lr", type=float, default=3e-4)
    parser.add_argument("--ppo-batch-size", type=int, default=32)
    parser.add_argument("--ppo-num-epochs", type=int, default=2)
    parser.add_argument("--ppo-num-mini-batches", type=int, default=2)
    parser.add_argument("--ppo-num-prompts", type=int, default=96)
    parser.add_argument("--ppo-beta-comparison", action="store_true", help="also small β + UWO vs large β + single")
    parser.add_argument("--small-beta", type=float, default=0.02)
    parser.add_argument("--large-beta", type=float, default=0.2)
    parser.add_argument("--skip-ppo", action="store_true", help="best-of-n part only")
    parser.add_argument("--only-ppo", action="store_true",
                        help="PPO part only (waits for the ensembles a concurrent best-of-n process trains)")
    parser.add_argument("--work-dir", default=None, help="cache of RMs, samples, scores and PPO runs")
    parser.add_argument("--output", default=None, help="path stem of the .json/.md/.png (default results/overoptimization)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budgets, writes overoptimization_quick.*")
    a = parser.parse_args(argv)
    if a.quick:
        a.ns, a.ensemble_n, a.k, a.num_prompts, a.m = [40, 80], 80, 2, 6, 8
        a.accuracy_pairs, a.calibration_size, a.ppo_steps, a.ppo_every, a.ppo_num_prompts = 20, 32, 4, 2, 8
        a.ppo_batch_size, a.lambdas = 8, [0.0, 0.5]
        a.seeds = a.seeds[:2] if len(a.seeds) >= 2 else [0, 1]
    if a.ensemble_n not in a.ns:
        parser.error(f"--ensemble-n {a.ensemble_n} must be one of --ns {a.ns}")
    if a.k < 2 or a.m < 2:
        parser.error(f"--k and --m must be >= 2, got k={a.k}, m={a.m}")
    ppo_seeds = a.seeds if a.ppo_seeds is None else a.ppo_seeds

    import torch

    from trl_extras.testbed import task_module
    from trl_extras.testbed.policy import default_cache_dir

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    start = time.perf_counter()
    stem = Path(a.output) if a.output else RESULTS / ("overoptimization_quick" if a.quick else "overoptimization")
    key = (f"{'quick' if a.quick else 'full'}-f{a.flip_rate}-bt{a.bt_temperature}-lr{a.rm_lr}-e{a.rm_epochs}"
           f"-b{a.rm_batch_size}-ns{max(a.ns)}")
    work = Path(a.work_dir or Path(default_cache_dir()).parent / "overoptimization" / key)
    work.mkdir(parents=True, exist_ok=True)
    sft_path = task_module(TASK).sft_policy(seed=0, progress=False)
    command = "python benchmarks/overoptimization.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"config": {**{k: v for k, v in vars(a).items() if not k.startswith("_")}, "table_ns": TABLE_NS}, "command": command, "work_dir": str(work),
              "sft_path": sft_path}

    def write() -> None:
        per_seed_bon, accuracy = load_bon(work, a)
        if per_seed_bon:
            result["bon"] = summarize_bon(per_seed_bon, a)
        runs = [r for r in load_ppo(work) if r["seed"] in ppo_seeds]
        result["ppo_runs"] = runs
        result["ppo"] = summarize_ppo(runs, a) if runs else None
        result["rm_accuracy"] = {n: ", ".join(f"{sum(col) / len(col):.3f}" for col in zip(*accs))
                                 for n, accs in accuracy.items()}
        result["goodhart"] = goodhart_contrast()
        result["compute"] = {**getattr(a, "_compute", {}), "ppo_train_s": sum(r["train_seconds"] for r in runs)}
        result["total_seconds"] = round(time.perf_counter() - start, 1)
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
        stem.with_suffix(".md").write_text(render(result))
        plot(result, stem.with_suffix(".png"))
        log(f"wrote {stem}.md/.json/.png")

    for seed in [] if a.only_ppo else a.seeds:
        samples = draw_samples(sft_path, work, a, seed)
        log(f"seed {seed}: {len(samples['completions'])} samples, mean gold {sum(samples['gold']) / len(samples['gold']):.3f}")
        score_seed(sft_path, work, a, seed, samples)
    write()
    if not a.skip_ppo:
        for phase in (0, 1) if a.ppo_beta_comparison else (0,):
            for seed in ppo_seeds:
                run_ppo_seed(sft_path, work, a, seed, write, phase)
        write()
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The pipeline's stages. Each takes the run context, writes its models under ``<output_dir>/<stage>/`` and returns
a JSON-able result (saved as ``result.json``; a stage with a result is skipped on the next run).

Every stage is one entry of :data:`PIPELINE_STAGES`, registered on its function with what the rest of the pipeline
needs to know about it (see there); adding a stage is one decorated function in this file, placed where it runs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.registry import Registry
from ..modeling.peft import save_model  # noqa: F401  (the stages save through it; also its old home)
from ..utils.imports import import_object  # noqa: F401  (re-exported: its old home; refresh imported it here)
from .config import PipelineConfig

logger = logging.getLogger(__name__)

#: The pipeline's stages in pipeline order (the default of ``PipelineConfig.stages``, which is validated against it).
#: Each entry is the stage's function ``fn(ctx: Context) -> dict`` (its JSON-able result), registered with:
#:
#: - ``inputs``: the stages whose results it reads; their fingerprints are part of its own, so re-running one makes
#:   it stale (see :func:`stage_settings`).
#: - ``settings``: the ``PipelineConfig`` fields that shape its outputs (its fingerprint): a finished stage made under
#:   other values is refused unless ``overwrite``. Every field is some stage's setting or in ``NON_SHAPING_SETTINGS``.
#: - ``evaluated``: its result's ``model`` is a row of the evaluate stage's table (compared with SFT).
#: - ``label`` (optional): that row's ``method``, a string or ``fn(config) -> str`` (default: the stage's name).
#: - ``summary`` (optional): ``fn(result) -> str``, numbers of the finished stage for its progress line.
#: - ``evaluates`` (optional): the stage also reads every ``evaluated`` stage (the evaluate stage).
PIPELINE_STAGES = Registry("pipeline stage", required=("inputs", "settings", "evaluated"))

# The settings every stage's outputs depend on (the start of each stage's `settings`).
_COMMON = ("task", "seed", "max_prompt_length", "max_completion_length", "temperature", "bf16")
#: Fields that do not shape any stage's outputs (where and which stages run, hardware); every other PipelineConfig
#: field must be in some stage's ``settings`` (a test checks it), or changing it would silently reuse stale stages.
NON_SHAPING_SETTINGS = ("output_dir", "stages", "overwrite", "use_cpu", "resume_allow_changes")


@dataclass
class Context:
    config: PipelineConfig
    data: dict
    model_args: object = None  # trl.ModelConfig (LoRA / 4-bit) or None
    results: dict = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return Path(self.config.output_dir)

    def stage_dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def gold(self):
        """The gold reward as ``RewardFunctions`` (None outside the testbed)."""
        if self.config.gold_reward is None:
            return None
        from ..rewards.functions import RewardFunctions

        return RewardFunctions(self.reward(self.config.gold_reward, "gold_reward"))

    def reward(self, spec: str, flag: str):
        """A reward spec of the recipe (the CLI's vocabulary): the task's 'gold' / 'heuristic', ``module:function``
        (imported, from the working directory too), else a reward-model path."""
        from ..testbed.names import TESTBED_REWARDS, testbed_rewards
        from ..utils.imports import resolve_reward_spec

        named = testbed_rewards(self.config.task) if spec in TESTBED_REWARDS else None
        return resolve_reward_spec(spec, named, flag)

    def trainer_kwargs(self) -> dict:
        """Common ``TrainingArguments`` for every stage."""
        import torch

        from ..utils.progress import disable_tqdm_default

        cpu = self.config.use_cpu or not torch.cuda.is_available()
        return dict(
            use_cpu=cpu,
            bf16=self.config.bf16 and not cpu,
            report_to="none",
            seed=self.config.seed,
            gradient_checkpointing=False,
            logging_steps=5,
            disable_tqdm=disable_tqdm_default(),  # bars on a terminal; PrinterCallback lines in a log file
            dataloader_num_workers=0,
        )

    def peft_config(self, task_type: str):
        if self.model_args is None or not getattr(self.model_args, "use_peft", False):
            return None
        from trl import get_peft_config

        cfg = get_peft_config(self.model_args)
        cfg.task_type = task_type
        return cfg

    def model_init_kwargs(self) -> dict:
        if self.model_args is None:
            return {}
        import torch
        from trl import get_quantization_config

        from ..modeling.quantization import kbit_device_map

        kwargs = {}
        quantization = get_quantization_config(self.model_args)
        if quantization is not None:
            kwargs.update(quantization_config=quantization, device_map=kbit_device_map(use_cpu=self.config.use_cpu))
        if getattr(self.model_args, "dtype", None) not in (None, "auto"):
            kwargs["dtype"] = getattr(torch, self.model_args.dtype)
        return kwargs


# ----------------------------------------------------------------------------------------------------------------
# 1. SFT with reward-based early stopping
# ----------------------------------------------------------------------------------------------------------------
def _sft_summary(result: dict) -> str:
    if not result.get("evaluations"):
        return ""
    return (f"stopped at step {result.get('stopped_at_step')}, best step by reward {result.get('best_step_by_reward')}, "
            f"by loss {result.get('best_step_by_loss')}")


@PIPELINE_STAGES.register(
    "sft", inputs=(), evaluated=True, label="SFT (reward ES)", summary=_sft_summary,
    settings=(*_COMMON, "policy_model", "sft_dataset", "num_sft_examples", "eval_prompt_dataset", "sft_reward",
              "sft_max_steps", "sft_eval_steps", "sft_learning_rate", "sft_patience", "train_batch_size"),
)
def stage_sft(ctx: Context) -> dict:
    """SFT on the curated data; the checkpoint is chosen by the reward of generated holdout answers."""
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from ..callbacks.reward_early_stopping import RewardEarlyStoppingCallback
    from ..testbed import task_module

    cfg, out = ctx.config, ctx.stage_dir("sft")
    # the testbed's starting policy: the kit's tiny model trained on the task's corpus with this seed (cached)
    base = cfg.policy_model or task_module(cfg.task).sft_policy(seed=cfg.seed, progress=True)
    if base is None:
        raise ValueError(f"task {cfg.task!r} has no built-in starting policy: set policy_model (e.g. 'smollm2').")
    tokenizer = AutoTokenizer.from_pretrained(base)
    sft = ctx.data["sft"].remove_columns([c for c in ctx.data["sft"].column_names if c not in ("prompt", "completion", "messages", "text")])
    split = sft.train_test_split(test_size=0.1, seed=cfg.seed)
    eval_prompts = ctx.data["eval_prompts"]["prompt"][:64]
    # The early-stopping reward: on the testbed the cheap proxy available before any RM is trained (the dirty
    # heuristic); real runs point `sft_reward` at an existing reward model, or None to select by eval_loss.
    # Gold is logged, never used to choose.
    callbacks, callback = [], None
    if cfg.sft_reward is not None:
        reward = ctx.reward(cfg.sft_reward, "sft_reward")
        extra = {"gold": ctx.gold.funcs[0]} if ctx.gold is not None else None
        callback = RewardEarlyStoppingCallback(
            reward, eval_prompts, processing_class=tokenizer, patience=cfg.sft_patience,
            max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature, extra_reward_funcs=extra,
            seed=cfg.seed,
        )
        callbacks.append(callback)
    args = SFTConfig(
        output_dir=str(out / "checkpoints"),
        max_steps=cfg.sft_max_steps,
        learning_rate=cfg.sft_learning_rate,
        per_device_train_batch_size=cfg.train_batch_size,
        per_device_eval_batch_size=64,
        eval_strategy="steps",
        eval_steps=cfg.sft_eval_steps,
        save_strategy="steps",
        save_steps=cfg.sft_eval_steps,
        save_total_limit=None,
        load_best_model_at_end=True,
        metric_for_best_model="eval_reward" if callback is not None else "eval_loss",
        greater_is_better=callback is not None,
        lr_scheduler_type="constant",
        max_length=cfg.max_prompt_length + cfg.max_completion_length,
        model_init_kwargs=ctx.model_init_kwargs() or None,
        **ctx.trainer_kwargs(),
    )
    trainer = SFTTrainer(
        model=base, args=args, train_dataset=split["train"], eval_dataset=split["test"], processing_class=tokenizer,
        callbacks=callbacks, peft_config=ctx.peft_config("CAUSAL_LM"),
    )
    if callback is not None:
        callback.set_trainer(trainer)  # log eval_reward through the trainer (report_to integrations) and its accelerator
    trainer.train()
    # Trainer.evaluate logs eval_loss; the callback logs eval_reward (and extras) in its own entry: merge by step.
    by_step: dict[int, dict] = {}
    for entry in trainer.state.log_history:
        if any(k.startswith("eval_") for k in entry):
            by_step.setdefault(entry["step"], {}).update(entry)
    evals = [by_step[s] for s in sorted(by_step)]
    by_loss = min(evals, key=lambda e: e.get("eval_loss", float("inf"))) if evals else None
    by_reward = max(evals, key=lambda e: e.get("eval_reward", float("-inf"))) if evals else None
    model_path = save_model(trainer.model, tokenizer, out / "model")
    return {
        "model": model_path,
        "base_model": base,
        "evaluations": evals,
        "best_step_by_reward": by_reward and by_reward["step"],
        "best_step_by_loss": by_loss and by_loss["step"],
        "stopped_at_step": trainer.state.global_step,
    }


# ----------------------------------------------------------------------------------------------------------------
# 2. Reward model: dirty-only baseline → easy-pair filtering → two-stage (dirty → clean)
# ----------------------------------------------------------------------------------------------------------------
def _reward_args(ctx: Context, output_dir: Path, epochs: float, **extra):
    from ..rewards.two_stage import TwoStageRewardConfig

    cfg = ctx.config
    return TwoStageRewardConfig(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        learning_rate=cfg.rm_learning_rate,
        per_device_train_batch_size=cfg.rm_batch_size,
        per_device_eval_batch_size=cfg.rm_batch_size,
        save_strategy="no",
        eval_strategy="no",
        max_length=cfg.max_prompt_length + cfg.max_completion_length + 4,
        model_init_kwargs=ctx.model_init_kwargs() or None,
        **ctx.trainer_kwargs(),
        **extra,
    )


@PIPELINE_STAGES.register(
    "reward", inputs=("sft",), evaluated=False,
    settings=(*_COMMON, "reward_base_model", "dirty_pairs_dataset", "clean_pairs_dataset", "num_dirty_pairs",
              "num_clean_pairs", "rm_learning_rate", "rm_batch_size", "rm_epochs", "rm_pretrain_epochs",
              "drop_easiest", "num_rm_test_pairs", "rm_clean_only_baseline"),
)
def stage_reward(ctx: Context) -> dict:
    """Train the dirty-only RM (also the Goodhart proxy), filter its easiest pairs, then train dirty→clean."""
    from trl import RewardConfig, RewardTrainer

    from ..rewards.filtering import filter_easy_pairs
    from ..rewards.metrics import evaluate_reward_model
    from ..rewards.two_stage import TwoStageRewardTrainer

    cfg, out = ctx.config, ctx.stage_dir("reward")
    init = cfg.reward_base_model or ctx.results["sft"]["model"]
    dirty, clean, test = ctx.data["dirty"], ctx.data["clean"], ctx.data["rm_test"]
    peft = ctx.peft_config("SEQ_CLS")
    accuracies = {}

    def train_one(name, dataset, epochs):
        args = RewardConfig(**{k: v for k, v in vars(_reward_args(ctx, out / name, epochs)).items()
                               if k in RewardConfig.__dataclass_fields__ and k != "_n_gpu"})
        trainer = RewardTrainer(model=init, args=args, train_dataset=dataset, peft_config=peft)
        trainer.train()
        return trainer

    # (a) dirty-only: a baseline, the model that scores pairs for filtering, and the hackable proxy of the demo
    dirty_trainer = train_one("dirty_only", dirty, cfg.rm_pretrain_epochs)
    tokenizer = dirty_trainer.processing_class
    accuracies["dirty only"] = evaluate_reward_model(dirty_trainer.model, tokenizer, test)
    dirty_path = save_model(dirty_trainer.model, tokenizer, out / "dirty_only" / "model")
    # (b) clean-only baseline (a row of the report only)
    if cfg.rm_clean_only_baseline:
        clean_trainer = train_one("clean_only", clean, cfg.rm_epochs)
        accuracies["clean only"] = evaluate_reward_model(clean_trainer.model, tokenizer, test)
        del clean_trainer
    # (c) drop the easiest dirty pairs (the dirty-only RM is most sure of them), then dirty → clean
    filtered, report = filter_easy_pairs(dirty_trainer.model, dirty, tokenizer, drop_easiest=cfg.drop_easiest)
    args = _reward_args(ctx, out / "two_stage", cfg.rm_epochs, pretrain_num_train_epochs=cfg.rm_pretrain_epochs)
    two_stage = TwoStageRewardTrainer(
        model=init, args=args, pretrain_dataset=filtered, train_dataset=clean, eval_dataset=test, peft_config=peft
    )
    two_stage.train()
    accuracies["dirty→clean (filtered)"] = evaluate_reward_model(two_stage.model, tokenizer, test)
    model_path = save_model(two_stage.model, tokenizer, out / "model")
    return {
        "model": model_path,
        "dirty_only_model": dirty_path,
        "accuracies": accuracies,
        "filtering": _jsonable(report),
    }


def _pair_columns(dataset):
    """Only the preference columns (explicit or implicit prompt), so datasets of different sources concatenate."""
    return dataset.select_columns([c for c in ("prompt", "chosen", "rejected") if c in dataset.column_names])


def _jsonable(obj):
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    elif hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        obj = asdict(obj)
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


# ----------------------------------------------------------------------------------------------------------------
# 3. Reward ensemble
# ----------------------------------------------------------------------------------------------------------------
@PIPELINE_STAGES.register(
    "ensemble", inputs=("sft",), evaluated=False,
    settings=(*_COMMON, "reward_base_model", "dirty_pairs_dataset", "clean_pairs_dataset", "num_dirty_pairs",
              "num_clean_pairs", "rm_learning_rate", "rm_batch_size", "ensemble_size", "ensemble_penalty",
              "ensemble_coef", "gold_reward"),
)
def stage_ensemble(ctx: Context) -> dict:
    """K reward models differing by seed (fresh heads on the SFT model), trained on the filtered dirty + clean pairs."""
    from datasets import concatenate_datasets
    from trl import RewardConfig

    from ..rewards.ensemble import train_reward_ensemble

    cfg, out = ctx.config, ctx.stage_dir("ensemble")
    init = cfg.reward_base_model or ctx.results["sft"]["model"]
    clean = _pair_columns(ctx.data["clean"])
    dirty = _pair_columns(ctx.data["dirty"])
    train = concatenate_datasets([dirty, clean, clean]).shuffle(seed=cfg.seed)  # clean pairs weighted twice
    base = _reward_args(ctx, out / "members", 1.0)
    args = RewardConfig(**{k: v for k, v in vars(base).items() if k in RewardConfig.__dataclass_fields__ and k != "_n_gpu"})
    ensemble = train_reward_ensemble(
        init, train, args=args, k=cfg.ensemble_size, output_dir=out / "model", peft_config=ctx.peft_config("SEQ_CLS"),
        penalty=cfg.ensemble_penalty, coef=cfg.ensemble_coef,
    )
    # disagreement on-distribution (SFT samples) vs off-distribution (hacks) — the reason the penalty helps
    result = {"model": str(out / "model"), "k": cfg.ensemble_size, "penalty": cfg.ensemble_penalty, "coef": cfg.ensemble_coef}
    if cfg.gold_reward is not None:
        from ..testbed import task_module

        hacked_completions = task_module(cfg.task).hacked_completions
        prompts = ctx.data["rm_test"]["prompt"][:256]
        on = ensemble.score(prompts, ctx.data["rm_test"]["chosen"][:256])
        off = ensemble.score(prompts, hacked_completions(prompts, seed=cfg.seed))
        result["std_on_distribution"] = float(on.std.mean())
        result["std_off_distribution"] = float(off.std.mean())
    return result


def load_ensemble(ctx: Context):
    from ..rewards.ensemble import RewardEnsemble

    return RewardEnsemble.from_pretrained(
        ctx.results["ensemble"]["model"], penalty=ctx.config.ensemble_penalty, coef=ctx.config.ensemble_coef
    )


# ----------------------------------------------------------------------------------------------------------------
# 4. CEM
# ----------------------------------------------------------------------------------------------------------------
def _ensemble_words(cfg: PipelineConfig) -> str:
    return f"ensemble {cfg.ensemble_penalty} λ={cfg.ensemble_coef:g}"


@PIPELINE_STAGES.register(
    "cem", inputs=("sft", "ensemble"), evaluated=True,
    label=lambda cfg: f"CEM ({cfg.cem_rounds} round{'s' if cfg.cem_rounds != 1 else ''}, {_ensemble_words(cfg)})",
    summary=lambda result: f"{len(result['history'])} rounds" if result.get("history") else "",
    settings=(*_COMMON, "prompt_dataset", "num_train_prompts", "sft_dataset", "num_sft_examples",
              "eval_prompt_dataset", "cem_rounds", "cem_num_generations", "cem_prompts_per_round", "cem_sft_mix_ratio",
              "sft_learning_rate", "gold_reward", "train_batch_size"),
)
def stage_cem(ctx: Context) -> dict:
    from ..trainers.cem import CEMConfig, CEMTrainer

    cfg, out = ctx.config, ctx.stage_dir("cem")
    sft = ctx.data["sft"].select_columns(["prompt", "completion"])
    args = CEMConfig(
        output_dir=str(out / "run"),
        num_rounds=cfg.cem_rounds,
        num_generations=cfg.cem_num_generations,
        prompts_per_round=cfg.cem_prompts_per_round,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        elite_top_k=1,
        sft_mix_ratio=cfg.cem_sft_mix_ratio,
        learning_rate=cfg.sft_learning_rate,
        per_device_train_batch_size=cfg.train_batch_size,
        num_train_epochs=1,
        save_strategy="no",
        model_init_kwargs=ctx.model_init_kwargs() or None,
        **ctx.trainer_kwargs(),
    )
    trainer = CEMTrainer(
        model=ctx.results["sft"]["model"], reward_funcs=load_ensemble(ctx), args=args,
        train_dataset=ctx.data["prompts"], eval_dataset=ctx.data["eval_prompts"].select(range(min(64, len(ctx.data["eval_prompts"])))),
        sft_dataset=sft, peft_config=ctx.peft_config("CAUSAL_LM"),
        eval_reward_funcs=ctx.gold.funcs[0] if ctx.gold is not None else None,
    )
    history = trainer.train()
    model_path = save_model(trainer.model, trainer.processing_class, out / "model")
    return {"model": model_path, "history": _jsonable(history)}


# ----------------------------------------------------------------------------------------------------------------
# 5. PPO (advantage-normalized, exact KL, ensemble uncertainty penalty)
# ----------------------------------------------------------------------------------------------------------------
def _trajectory_callback(ctx: Context, every: int, num_prompts: int = 64, proxy=None):
    """Measures gold, proxy (``proxy``, default the reward ensemble) and KL to SFT every ``every`` steps: the
    data of the Goodhart plot."""
    from transformers import AutoModelForCausalLM

    from ..callbacks.reward_measure import RewardMeasureCallback
    from ..rewards.functions import RewardFunctions

    cfg = ctx.config
    sft_model = AutoModelForCausalLM.from_pretrained(ctx.results["sft"]["model"], **ctx.model_init_kwargs())
    rewards = {"proxy": RewardFunctions(load_ensemble(ctx)), **({"gold": ctx.gold} if ctx.gold is not None else {})}
    return RewardMeasureCallback(
        rewards, ctx.data["eval_prompts"]["prompt"][:num_prompts], every_n_steps=every, ref_model=sft_model,
        max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature, seed=cfg.seed, prefix="trajectory",
    )


def _run_ppo(ctx: Context, name: str, reward, extra_callbacks=(), kl_coef: float | None = None,
             trajectory_proxy=None) -> dict:
    """PPO from the SFT model on ``reward`` (the value model starts from the reward stage's RM); stage ``name``;
    ``kl_coef`` overrides ``ppo_kl_coef``; ``trajectory_proxy`` is the proxy the trajectory tracks (default the
    reward ensemble)."""
    from ..trainers.ppo import PPOConfig, PPOTrainer

    cfg, out = ctx.config, ctx.stage_dir(name)
    args = PPOConfig(
        output_dir=str(out / "run"),
        max_steps=cfg.ppo_max_steps,
        per_device_train_batch_size=cfg.ppo_batch_size,
        learning_rate=cfg.ppo_learning_rate,
        max_prompt_length=cfg.max_prompt_length,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        kl_estimator="exact",
        kl_coef=cfg.ppo_kl_coef if kl_coef is None else kl_coef,
        num_ppo_epochs=cfg.ppo_num_epochs,
        advantage_normalization="batch",
        save_strategy="no",
        model_init_kwargs=ctx.model_init_kwargs() or None,
        **ctx.trainer_kwargs(),
    )
    points = cfg.ppo_trajectory_points
    trajectory = (_trajectory_callback(ctx, every=max(1, cfg.ppo_max_steps // points), proxy=trajectory_proxy)
                  if points else None)
    trainer = PPOTrainer(
        model=ctx.results["sft"]["model"], reward_funcs=reward, args=args,
        train_dataset=ctx.data["prompts"], value_model=ctx.results["reward"]["model"],
        peft_config=ctx.peft_config("CAUSAL_LM"), callbacks=[c for c in (trajectory, *extra_callbacks) if c is not None],
    )
    for callback in (trajectory, *extra_callbacks):
        if hasattr(callback, "set_trainer"):
            callback.set_trainer(trainer)
    trainer.train()
    model_path = save_model(trainer.policy, trainer.processing_class, out / "model")
    logs = [e for e in trainer.state.log_history if "loss" in e or any(k.startswith("reward") for k in e)]
    return {"model": model_path, "reward": cfg.ppo_reward, "trajectory": trajectory.points if trajectory else [], "log_history": _jsonable(logs)}


@PIPELINE_STAGES.register(
    "ppo_single", inputs=("sft", "reward"), evaluated=True,
    label=lambda cfg: f"PPO (single RM, β={cfg.ppo_single_kl_coef:g})",
    settings=(*_COMMON, "prompt_dataset", "num_train_prompts", "eval_prompt_dataset", "ppo_max_steps",
              "ppo_batch_size", "ppo_learning_rate", "ppo_single_kl_coef", "gold_reward", "ppo_num_epochs"),
)
def stage_ppo_single(ctx: Context) -> dict:
    """PPO against one fixed reward model (the reward stage's dirty→clean RM, the value model's initialisation too)
    with β = ``ppo_single_kl_coef`` (0 by default): the over-optimization baseline the KL penalty, the ensemble
    penalty and the reward refresh are measured against."""
    rm = ctx.results["reward"]["model"]
    return _run_ppo(ctx, "ppo_single", rm, kl_coef=ctx.config.ppo_single_kl_coef, trajectory_proxy=rm)


@PIPELINE_STAGES.register(
    "ppo", inputs=("sft", "reward", "ensemble"), evaluated=True,
    label=lambda cfg: f"PPO (gold reward, β={cfg.ppo_kl_coef:g})" if cfg.ppo_reward == "gold"
    else f"PPO ({_ensemble_words(cfg)}, β={cfg.ppo_kl_coef:g})",
    settings=(*_COMMON, "prompt_dataset", "num_train_prompts", "eval_prompt_dataset", "ppo_max_steps",
              "ppo_batch_size", "ppo_learning_rate", "ppo_kl_coef", "gold_reward", "ppo_num_epochs", "ppo_reward",
              "ppo_trajectory_points"),
)
def stage_ppo(ctx: Context) -> dict:
    reward = ctx.gold.funcs[0] if ctx.config.ppo_reward == "gold" else load_ensemble(ctx)
    return _run_ppo(ctx, "ppo", reward)


# ----------------------------------------------------------------------------------------------------------------
# 5b. PPO with the article's "second way": the reward ensemble re-trained on the policy's own answers during RL
# ----------------------------------------------------------------------------------------------------------------
@PIPELINE_STAGES.register(
    "ppo_refresh", inputs=("sft", "reward", "ensemble"), evaluated=True,
    label=lambda cfg: f"PPO (refreshed RM, β={cfg.ppo_kl_coef:g})",
    settings=(*_COMMON, "prompt_dataset", "num_train_prompts", "eval_prompt_dataset", "ppo_max_steps",
              "ppo_batch_size", "ppo_learning_rate", "ppo_kl_coef", "gold_reward", "ppo_num_epochs",
              "ensemble_penalty", "ensemble_coef", "refresh_every", "refresh_num_pairs", "refresh_flip_rate",
              "rm_learning_rate", "rm_batch_size", "num_clean_pairs", "ppo_trajectory_points"),
)
def stage_ppo_refresh(ctx: Context) -> dict:
    """PPO against the same reward ensemble as the PPO stage, but every ``refresh_every`` steps the policy and the
    SFT model answer ``refresh_num_pairs`` fresh train prompts, the gold judge labels the pairs (with
    ``refresh_flip_rate`` label noise, like AI trainers) and every member is re-trained on them (with replay of the
    clean pairs) and re-calibrated: :class:`~trl_extras.callbacks.reward_refresh.RewardRefreshCallback`."""
    from ..callbacks.reward_refresh import RewardRefreshCallback
    from ..refresh.labeling import RewardJudge
    from ..refresh.refresh import default_refresh_config

    cfg = ctx.config
    if ctx.gold is None:
        raise ValueError("The ppo_refresh stage needs `gold_reward`: the judge that labels the policy's answers.")
    judge = RewardJudge(ctx.gold.funcs[0], flip_rate=cfg.refresh_flip_rate, seed=cfg.seed)
    callback = RewardRefreshCallback(
        judge, every_n_steps=cfg.refresh_every, num_pairs=cfg.refresh_num_pairs, prompts=ctx.data["prompts"],
        baseline=ctx.results["sft"]["model"], replay_pairs=_pair_columns(ctx.data["clean"]),
        refresh_args=default_refresh_config(str(ctx.stage_dir("ppo_refresh") / "refresh"), learning_rate=cfg.rm_learning_rate,
                                            per_device_train_batch_size=cfg.rm_batch_size, seed=cfg.seed),
        max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature, seed=cfg.seed,
    )
    result = _run_ppo(ctx, "ppo_refresh", load_ensemble(ctx), [callback])
    result["refreshes"] = _jsonable([
        {"step": h["step"], "labels": h["labels"], "policy_win_rate": h["policy_win_rate"],
         "accuracy_before": h["report"]["accuracy_before"], "accuracy_after": h["report"]["accuracy_after"]}
        for h in callback.history
    ])
    return result


# ----------------------------------------------------------------------------------------------------------------
# 6. DPO on reward-synthesized pairs, then on real pairs
# ----------------------------------------------------------------------------------------------------------------
@PIPELINE_STAGES.register(
    "dpo", inputs=("sft", "ensemble"), evaluated=True, label="DPO (synthetic → real pairs)",
    settings=(*_COMMON, "prompt_dataset", "num_train_prompts", "real_pairs_dataset", "num_clean_pairs",
              "dpo_num_generations", "dpo_max_steps", "dpo_learning_rate", "dpo_beta", "train_batch_size"),
)
def stage_dpo(ctx: Context) -> dict:
    from trl import DPOConfig

    from ..evaluation.synthetic_pairs import run_two_stage_dpo, synthesize_preference_pairs

    cfg, out = ctx.config, ctx.stage_dir("dpo")
    sft_path = ctx.results["sft"]["model"]
    pairs, stats = synthesize_preference_pairs(
        sft_path, load_ensemble(ctx), ctx.data["prompts"]["prompt"], n=cfg.dpo_num_generations,
        max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature, seed=cfg.seed, return_stats=True,
        progress=True,
    )
    pairs.save_to_disk(str(out / "synthetic_pairs"))
    args = DPOConfig(
        output_dir=str(out / "run"),
        max_steps=cfg.dpo_max_steps,
        learning_rate=cfg.dpo_learning_rate,
        beta=cfg.dpo_beta,
        per_device_train_batch_size=cfg.train_batch_size,
        save_strategy="no",
        model_init_kwargs=ctx.model_init_kwargs() or None,
        **ctx.trainer_kwargs(),
    )
    real = ctx.data["real_pairs"]
    if real is not None:
        _, final = run_two_stage_dpo(sft_path, _pair_columns(pairs), _pair_columns(real), args,
                                     peft_config=ctx.peft_config("CAUSAL_LM"))
    else:
        from trl import DPOTrainer

        final = DPOTrainer(model=sft_path, args=args, train_dataset=pairs, peft_config=ctx.peft_config("CAUSAL_LM"))
        final.train()
    model_path = save_model(final.model, final.processing_class, out / "model")
    return {"model": model_path, "num_synthetic_pairs": len(pairs), "synthesis": _jsonable(stats)}


# ----------------------------------------------------------------------------------------------------------------
# 7. Evaluation: every model against the SFT model
# ----------------------------------------------------------------------------------------------------------------
def evaluated_models(ctx: Context) -> dict[str, str]:
    """``{row name: model path}`` of the evaluation table: the pretrained model, then every finished stage flagged
    ``evaluated`` (SFT first), in pipeline order."""
    models = {"pretrained": ctx.results["sft"]["base_model"]}
    for name in PIPELINE_STAGES.names(evaluated=True):
        if name in ctx.results:
            models[name] = ctx.results[name]["model"]
    return models


@PIPELINE_STAGES.register(
    "evaluate", inputs=("sft", "reward", "ensemble"), evaluates=True, evaluated=False,
    summary=lambda result: (f"{len(result['table'])} models on {result.get('num_prompts')} prompts"
                            if result.get("table") else ""),
    settings=(*_COMMON, "eval_prompt_dataset", "num_eval_prompts", "gold_reward", "ensemble_penalty", "ensemble_coef",
              "eval_temperature"),
)
def stage_evaluate(ctx: Context) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..evaluation.side_by_side import side_by_side
    from ..rewards.functions import RewardFunctions
    from .evaluate import evaluate_policy

    cfg = ctx.config
    prompts = ctx.data["eval_prompts"]["prompt"]
    proxy = RewardFunctions(load_ensemble(ctx))
    dirty_proxy = RewardFunctions(ctx.results["reward"]["dirty_only_model"]) if "reward" in ctx.results else None
    gold = ctx.gold
    sft_path = ctx.results["sft"]["model"]
    device = "cuda" if torch.cuda.is_available() and not cfg.use_cpu else "cpu"
    sft_model = AutoModelForCausalLM.from_pretrained(sft_path, **ctx.model_init_kwargs()).to(device)
    candidates = evaluated_models(ctx)
    temperature = cfg.temperature if cfg.eval_temperature is None else cfg.eval_temperature
    # every model at the sampling temperature AND greedy: a gain that exists only when sampling is sharpening
    decodings = {"": temperature, "_greedy": 0.0}
    evaluations = {}
    for name, path in candidates.items():
        model = sft_model if name == "sft" else AutoModelForCausalLM.from_pretrained(path, **ctx.model_init_kwargs()).to(device)
        tokenizer = AutoTokenizer.from_pretrained(path)
        for suffix, temp in decodings.items():
            if suffix and temp == temperature:  # the evaluation is greedy already
                evaluations[name, suffix] = evaluations[name, ""]
                continue
            if suffix:  # the second decoding is judged only (gold, or the proxy without gold): no KL/RM passes
                evaluations[name, suffix] = evaluate_policy(
                    name, model, tokenizer, None, prompts, None if gold is not None else proxy, gold,
                    max_new_tokens=cfg.max_completion_length, temperature=temp, seed=cfg.seed)
                continue
            evaluations[name, suffix] = evaluate_policy(
                name, model, tokenizer, sft_model, prompts, proxy, gold, max_new_tokens=cfg.max_completion_length,
                temperature=temp, seed=cfg.seed, extra_rewards={"dirty_rm": dirty_proxy} if dirty_proxy is not None else None,
            )
    rows = []
    judge = gold.funcs[0] if gold is not None else proxy.funcs[0]
    for name in candidates:
        row = {"stage": name, **evaluations[name, ""].row(), "method": method_label(name, cfg)}
        for suffix in decodings:
            ev = evaluations[name, suffix]
            if suffix:
                row.update({f"gold{suffix}": ev.gold_mean, f"gold_ci{suffix}": ev.gold_ci})
                if ev.proxy_mean is not None:  # no gold: the second decoding was judged by the proxy
                    row[f"proxy{suffix}"] = ev.proxy_mean
            if name != "sft":
                sbs = side_by_side(ev.completions, evaluations["sft", suffix].completions, prompts, judge, seed=cfg.seed)
                row.update({f"win_rate{suffix}": sbs.win_rate, f"win_rate_ci{suffix}": list(sbs.win_rate_ci),
                            f"p_value{suffix}": sbs.p_value, f"wins{suffix}": sbs.wins, f"losses{suffix}": sbs.losses,
                            f"ties{suffix}": sbs.ties})
        rows.append(row)
    return {"table": rows, "judge": "gold" if gold is not None else "reward ensemble", "num_prompts": len(prompts),
            "temperature": temperature, "ppo_reward": cfg.ppo_reward}


def method_label(stage: str, cfg: PipelineConfig) -> str:
    """What the model of ``stage`` is, in words with its settings (the ``method`` of the evaluation table): the
    stage's registered ``label``."""
    if stage not in PIPELINE_STAGES:
        return stage  # "pretrained", the starting model, is no stage
    label = PIPELINE_STAGES.get(stage).attributes.get("label", stage)
    return label(cfg) if callable(label) else label


def stage_inputs(name: str) -> tuple[str, ...]:
    """The stages whose results stage ``name`` reads, in pipeline order: its ``inputs``, and every ``evaluated``
    stage for a stage that ``evaluates`` them."""
    entry = PIPELINE_STAGES.get(name)
    reads = set(entry.inputs)
    if entry.attributes.get("evaluates", False):
        reads |= set(PIPELINE_STAGES.names(evaluated=True))
    return tuple(n for n in PIPELINE_STAGES if n in reads)


def stage_settings(ctx: Context, name: str) -> dict:
    """The fingerprint of stage ``name``: its settings, the model arguments (LoRA/4-bit) and the fingerprints of the
    finished stages it reads (so re-running an upstream stage makes its consumers stale)."""
    from ..utils.fingerprint import fingerprint_hash, settings_fingerprint

    values = {field_name: getattr(ctx.config, field_name) for field_name in PIPELINE_STAGES.get(name).settings}
    if ctx.model_args is not None:
        values["model_args"] = {k: v for k, v in sorted(vars(ctx.model_args).items()) if not k.startswith("_")}
    for upstream in stage_inputs(name):
        if upstream in ctx.results and "settings" in ctx.results[upstream]:
            values[f"{upstream}_stage"] = fingerprint_hash(ctx.results[upstream]["settings"])
    return settings_fingerprint(**values)


def stage_summary(name: str, result: dict) -> str:
    """A few numbers of a finished stage for its one progress line (``""`` when the stage has none)."""
    summary = PIPELINE_STAGES.get(name).attributes.get("summary")  # the stage's own numbers first
    parts = [summary(result)] if summary is not None else []
    if result.get("trajectory"):
        last = result["trajectory"][-1]
        parts.append(f"step {last['step']}: " + ", ".join(
            f"{key} {last[key]:.3f}" for key in ("gold", "proxy", "kl") if isinstance(last.get(key), (int, float))
        ))
    if result.get("refreshes"):
        parts.append(f"{len(result['refreshes'])} reward-model refreshes")
    parts = [part for part in parts if part]
    return (": " + "; ".join(parts)) if parts else ""


def run_pipeline(config: PipelineConfig, model_args=None, progress: bool = True) -> Context:
    """Run ``config.stages`` in order, skipping those with a ``result.json`` (unless ``overwrite``).

    ``result.json`` is written atomically once a stage has finished (a stage killed midway has none and runs again)
    and stores the stage's settings; a finished stage made under other settings is refused with the changed
    fields named, unless ``overwrite`` re-runs it.
    """
    from ..utils.resume import OutputDirLock, check_writable

    check_writable(config.output_dir)  # before any work: a read-only output_dir fails now, not after a stage
    with OutputDirLock(config.output_dir, "pipeline"):  # a second pipeline on this directory is refused
        return _run_stages(config, model_args, progress)


STAGE_KIND = "pipeline_stage"


def _finished_stage(path: Path, name: str, hashes: bool) -> dict | None:
    """The stage's ``result.json`` when the stage is complete (its manifest, written last, verifies: sha256 when
    ``hashes``, sizes otherwise); None for a stage that did not finish or was damaged (it runs again)."""
    from ..utils.atomic import read_json
    from ..utils.resume import verify

    if not (path / "result.json").exists():
        return None
    problem = verify(path, STAGE_KIND, hashes=hashes)
    if problem is not None:
        logger.warning("Pipeline stage %s in %s is not complete (%s): it runs again.", name, path, problem)
        return None
    return read_json(path / "result.json", what=f"Pipeline stage {name!r} result")


def _run_stages(config: PipelineConfig, model_args, progress: bool) -> Context:
    from ..utils.atomic import atomic_write_json
    from ..utils.fingerprint import check_fingerprint
    from ..utils.progress import log_line, quiet_library_bars
    from ..utils.resume import write_manifest
    from .data import pipeline_datasets

    quiet_library_bars()
    config.check_models()
    ctx = Context(config=config, data=pipeline_datasets(config), model_args=model_args)
    ctx.root.mkdir(parents=True, exist_ok=True)
    for name in PIPELINE_STAGES:  # results of earlier runs feed later stages even when not re-run
        # stages this run may skip are verified by content (sha256); the others only feed settings downstream. A
        # stage without a complete manifest runs again in its directory (a CEM stage resumes its complete rounds).
        result = _finished_stage(ctx.root / name, name, hashes=name in config.stages and not config.overwrite)
        if result is not None:
            ctx.results[name] = result
    for name in config.stages:
        path = ctx.root / name / "result.json"
        if name in ctx.results and not config.overwrite:
            check_fingerprint(
                ctx.results[name].get("settings"), stage_settings(ctx, name),
                f"Stage {name!r} in {path.parent}",
                "Pass --overwrite true to re-run the stages (later stages that read it are then refused too until "
                "re-run), or use another --output_dir.",
                allow=config.resume_allow_changes,
            )
            logger.info("stage %s: outputs exist, skipped", name)
            if progress:
                log_line("pipeline", f"stage {name}: outputs exist in {path.parent}, skipped")
            continue
        if config.overwrite and path.parent.exists():  # re-run from scratch: never resume stale work (CEM rounds)
            import shutil

            shutil.rmtree(path.parent)
        if progress:  # the start too, not only the end: in a log file a stage is otherwise silent for minutes
            log_line("pipeline", f"stage {name}: running ...")
        start = time.perf_counter()
        result = PIPELINE_STAGES.get(name)(ctx)
        result["seconds"] = round(time.perf_counter() - start, 1)
        result["settings"] = stage_settings(ctx, name)
        ctx.results[name] = result
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, _jsonable(result))
        write_manifest(path.parent, STAGE_KIND, fingerprint=result["settings"])  # last: the stage is finished
        if progress:
            log_line("pipeline", f"stage {name}: done in {result['seconds']:.0f} s{stage_summary(name, result)}")
    return ctx

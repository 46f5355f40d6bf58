"""Continue training a reward model on comparisons of the policy's own answers (the article's "second way").

:func:`refresh_reward_model` trains the SAME reward-model object further — score head and any LoRA adapter kept, a
fresh optimizer and schedule, exactly how stage 2 of :class:`~trl_extras.rewards.two_stage.TwoStageRewardTrainer`
continues a trained model (TRL's ``RewardTrainer`` given the model instance) — on the new pairs plus a replayed share
of earlier pairs (so the model does not forget its original data). For a
:class:`~trl_extras.rewards.ensemble.RewardEnsemble` every member (a full model, or a LoRA adapter with its score head)
is refreshed (each with its own seed), then the ensemble is re-calibrated on the completions it was just trained on. The model is changed in place, so a trainer
that scores with it sees the refreshed model at its next rollout.

Accuracy on the new pairs is measured before and after (Bradley–Terry margin > 0, ties half right:
:func:`~trl_extras.rewards.metrics.pairwise_accuracy`); the "before" number says how wrong the reward model was on the
policy's current answers — the Goodhart gap the refresh closes.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import asdict, dataclass, field

from trl import RewardConfig

logger = logging.getLogger(__name__)
PAIR_COLUMNS = ("prompt", "chosen", "rejected")


@dataclass
class RewardRefreshConfig(RewardConfig):
    """``RewardConfig`` for a refresh (the inherited fields — ``learning_rate``, ``num_train_epochs``,
    ``per_device_train_batch_size``, ``max_length``, ``seed`` ... — mean what they mean in TRL) plus the replay share.

    Defaults differ from TRL's for a short continuation on CPU-friendly settings: ``gradient_checkpointing=False``,
    ``save_strategy="no"``, ``report_to="none"``, ``logging_steps=10``.
    """

    replay_ratio: float = field(
        default=1.0,
        metadata={"help": "Replayed earlier pairs per new pair (0: new pairs only). Sampled without replacement "
                  "from `replay_pairs` (all of them when fewer)."},
    )
    calibration_size: int = field(
        default=512,
        metadata={"help": "Ensembles: re-calibrate on the chosen and rejected completions of up to this many of the "
                  "training pairs after the refresh (0: keep the old calibration)."},
    )
    score_batch_size: int = field(default=64, metadata={"help": "Sequences per forward pass when measuring accuracy."})

    def __post_init__(self):
        if self.replay_ratio < 0:
            raise ValueError(f"replay_ratio must be >= 0, got {self.replay_ratio}.")
        if self.calibration_size < 0:
            raise ValueError(f"calibration_size must be >= 0, got {self.calibration_size}.")
        super().__post_init__()


def default_refresh_config(output_dir: str, **overrides) -> RewardRefreshConfig:
    """A :class:`RewardRefreshConfig` with the project's quiet CPU-safe defaults (overridable)."""
    import torch

    kwargs = dict(
        output_dir=output_dir, gradient_checkpointing=False, save_strategy="no", report_to="none",
        logging_steps=10, disable_tqdm=True, bf16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(),
        learning_rate=1e-4, num_train_epochs=1.0, per_device_train_batch_size=32,
    )
    kwargs.update(overrides)
    return RewardRefreshConfig(**kwargs)


@dataclass
class RefreshReport:
    """What a refresh did. Accuracies are on the new pairs (and on ``eval_pairs`` when given), before and after."""

    num_new_pairs: int
    num_replay_pairs: int
    accuracy_before: float
    accuracy_after: float
    eval_accuracy_before: float | None = None
    eval_accuracy_after: float | None = None
    member_accuracy_before: list[float] | None = None
    member_accuracy_after: list[float] | None = None
    train_loss: float | None = None
    seconds: float = 0.0
    calibration: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def metrics(self, prefix: str = "refresh/") -> dict:
        """Flat float metrics for a trainer's log."""
        out = {
            "num_new_pairs": float(self.num_new_pairs), "num_replay_pairs": float(self.num_replay_pairs),
            "accuracy_before": self.accuracy_before, "accuracy_after": self.accuracy_after,
            "seconds": self.seconds,
        }
        if self.eval_accuracy_before is not None:
            out["eval_accuracy_before"] = self.eval_accuracy_before
            out["eval_accuracy_after"] = self.eval_accuracy_after
        if self.train_loss is not None:
            out["train_loss"] = self.train_loss
        return {prefix + k: float(v) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------------------------
def resolve_reward_model(reward_model, processing_class=None):
    """``(kind, target, tokenizer)``: ``kind`` is ``"model"`` (a sequence-classification model or PeftModel) or
    ``"ensemble"``. Accepts a model, a ``RewardModelScorer`` (its ``.model`` is refreshed), or a ``RewardEnsemble``."""
    import torch

    from ..rewards.ensemble import RewardEnsemble
    from ..rewards.scoring import RewardModelScorer
    from ..rewards.source import EnsembleReward

    if isinstance(reward_model, EnsembleReward):  # the reward contract's adapter: refresh the ensemble it wraps
        reward_model = reward_model.ensemble
    if isinstance(reward_model, RewardEnsemble):
        return "ensemble", reward_model, processing_class or reward_model.processing_class
    if isinstance(reward_model, RewardModelScorer):
        return "model", reward_model.model, processing_class or reward_model.processing_class
    if isinstance(reward_model, torch.nn.Module):
        if hasattr(reward_model, "ds_id") or type(reward_model).__name__ == "DeepSpeedEngine":
            raise NotImplementedError("Refreshing a reward model wrapped in a DeepSpeed engine is not supported.")
        if processing_class is None:
            raise ValueError("Pass `processing_class` (the reward model's tokenizer) with a reward-model instance.")
        return "model", reward_model, processing_class
    if isinstance(reward_model, str):
        raise TypeError(
            "refresh_reward_model changes a reward model in place: pass the loaded model (or the RewardModelScorer / "
            "RewardEnsemble a trainer scores with), not a path."
        )
    raise TypeError(f"Cannot refresh a reward of type {type(reward_model).__name__}: a model, RewardModelScorer or "
                    "RewardEnsemble is needed.")


def _pair_dataset(pairs, what: str):
    """Only ``prompt/chosen/rejected``, or None for None/empty input. An EMPTY answer is allowed: a policy can stop at
    once, and "anything beats saying nothing" is exactly what a refresh may need to learn (RewardTrainer scores it as
    prompt + EOS). ``None`` answers, identical chosen/rejected and missing columns are errors."""
    if pairs is None:
        return None
    if not hasattr(pairs, "column_names"):
        raise TypeError(f"{what} must be a datasets.Dataset with prompt/chosen/rejected columns, got {type(pairs).__name__}.")
    missing = [c for c in ("chosen", "rejected") if c not in pairs.column_names]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; it has {pairs.column_names}.")
    if len(pairs) == 0:
        return None
    ids = pairs["id"] if "id" in pairs.column_names else None
    for i, (c, r) in enumerate(zip(pairs["chosen"], pairs["rejected"])):
        name = f"{what} row {i}" + (f" (id {ids[i]!r})" if ids is not None else "")
        if c is None or r is None:
            raise ValueError(f"{name} has a None {'chosen' if c is None else 'rejected'} answer.")
        if c == r:
            raise ValueError(f"{name} has identical chosen and rejected answers: no preference to learn.")
    return pairs.select_columns([c for c in PAIR_COLUMNS if c in pairs.column_names])


def _label_summary(pairs) -> str:
    """The text ``" from N comparisons (T ties, U unlabelled)"`` when ``pairs`` came from ``to_preference_pairs`` (it
    keeps the label counts in ``info.description``), else a generic hint."""
    import json

    try:
        counts = json.loads(pairs.info.description)
        total = counts["labelled"] + counts["unlabelled"]
        return f" from {total} comparisons ({counts['ties']} ties, {counts['unlabelled']} unlabelled)"
    except (AttributeError, KeyError, TypeError, ValueError):  # not from to_preference_pairs: no counts to report
        return " (every comparison a tie or unlabelled?)"


def _columns(pairs) -> tuple[list, list, list]:
    chosen, rejected = list(pairs["chosen"]), list(pairs["rejected"])
    if "prompt" in pairs.column_names:
        return list(pairs["prompt"]), chosen, rejected
    empty = [] if isinstance(chosen[0], list) else ""  # implicit prompt, as RewardTrainer reads it
    return [empty] * len(chosen), chosen, rejected


def _margins(kind, target, tokenizer, pairs, batch_size) -> tuple:
    """Margins ``(N,)`` of the whole reward (ensemble: its calibrated mean) and ``(K, N)`` of ensemble members."""
    import torch

    from ..rewards.pairs import check_pad_pooling
    from ..rewards.scoring import score_with_reward_model

    prompts, chosen, rejected = _columns(pairs)
    if kind == "model":
        check_pad_pooling(target, tokenizer)
        margins = (score_with_reward_model(target, tokenizer, prompts, chosen, batch_size)
                   - score_with_reward_model(target, tokenizer, prompts, rejected, batch_size))
        return margins, None
    sc, sr = target.score(prompts, chosen), target.score(prompts, rejected)
    return (sc.mean - sr.mean), torch.as_tensor(sc.members - sr.members)


@contextlib.contextmanager
def _isolated_training_state():
    """Keep the caller's RNG streams and accelerate's shared gradient state as they were: a refresh runs a nested
    ``Trainer`` (which seeds everything and resets the gradient-accumulation plugin) inside, e.g., a PPO run."""
    import numpy as np
    import torch
    from accelerate.state import GradientState

    py, npy, cpu = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    grad_state = dict(GradientState._shared_state)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        GradientState._shared_state.clear()
        GradientState._shared_state.update(grad_state)


def _train_one(model, tokenizer, data, args: RewardRefreshConfig) -> float | None:
    """Continue training ``model`` in place with TRL's RewardTrainer (same object: head and adapter kept)."""
    from trl import RewardTrainer

    from ..modeling.quantization import keep_4bit_layers_differentiable

    was_training = model.training
    frozen = None
    if not any(p.requires_grad for p in model.parameters()):
        if hasattr(model, "peft_config"):
            raise ValueError("The PEFT reward model has no trainable parameter (adapter inactive?): nothing to refresh.")
        frozen = [p for p in model.parameters()]  # e.g. a reward model a trainer froze: train it, freeze it again
        model.requires_grad_(True)
    try:
        trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
        if trainer.accelerator.unwrap_model(trainer.model) is not model:
            raise RuntimeError("RewardTrainer would train a different object than the reward model given.")
        keep_4bit_layers_differentiable(trainer.model)
        output = trainer.train()
    finally:
        if frozen is not None:
            for p in frozen:
                p.requires_grad_(False)
        model.train(was_training)
    return float(output.training_loss) if output is not None else None


def refresh_reward_model(
    reward_model,
    new_pairs,
    replay_pairs=None,
    args: RewardRefreshConfig | None = None,
    processing_class=None,
    eval_pairs=None,
) -> RefreshReport:
    """Continue training ``reward_model`` in place on ``new_pairs`` plus ``args.replay_ratio`` × as many replayed
    pairs from ``replay_pairs``; report accuracy on the new pairs (and ``eval_pairs``) before and after.

    Args:
        reward_model: a sequence-classification reward model (plain or PEFT; pass ``processing_class``), a
            ``RewardModelScorer`` (what ``PPOTrainer`` scores with), or a ``RewardEnsemble`` (every member — a full model, or
            a LoRA adapter with its score head — is refreshed, seeds ``args.seed + k``, then the ensemble is
            re-calibrated).
        new_pairs: preference pairs (``prompt``/``chosen``/``rejected``; extra columns ignored), e.g. from
            :func:`~trl_extras.refresh.labeling.to_preference_pairs`.
        replay_pairs: earlier pairs (the reward model's original data, earlier refreshes' pairs), or None.
        args: a :class:`RewardRefreshConfig` (default: :func:`default_refresh_config` in ``"reward_refresh"``).
        eval_pairs: optional held-out pairs to check the refresh does not hurt elsewhere.

    Raises ``ValueError`` when there are zero usable new pairs (e.g. every comparison was a tie).
    """
    from datasets import concatenate_datasets

    from ..rewards.metrics import pairwise_accuracy

    start = time.perf_counter()
    args = args or default_refresh_config("reward_refresh")
    kind, target, tokenizer = resolve_reward_model(reward_model, processing_class)
    new = _pair_dataset(new_pairs, "new_pairs")
    if new is None:
        raise ValueError(
            f"A refresh needs at least one usable preference pair, got 0{_label_summary(new_pairs)}. Label some "
            "comparisons A or B (where one answer is better), then pass the pairs again; the labelled ones are kept."
        )
    replay = _pair_dataset(replay_pairs, "replay_pairs")
    evals = _pair_dataset(eval_pairs, "eval_pairs")
    n_replay = 0
    data = new
    if replay is not None and args.replay_ratio > 0:
        n_replay = min(len(replay), round(args.replay_ratio * len(new)))
        if n_replay:
            idx = random.Random(args.seed).sample(range(len(replay)), n_replay)
            data = concatenate_datasets([new, replay.select(idx)])
    data = data.shuffle(seed=args.seed)

    before, members_before = _margins(kind, target, tokenizer, new, args.score_batch_size)
    eval_before = _margins(kind, target, tokenizer, evals, args.score_batch_size)[0] if evals is not None else None
    losses = []
    with _isolated_training_state():
        if kind == "model":
            losses.append(_train_one(target, tokenizer, data, args))
        else:
            from dataclasses import replace

            members = target.models if target.layout == "separate" else target.adapter_names
            for k, member in enumerate(members):
                member_args = replace(args, seed=args.seed + k, data_seed=args.seed + k)
                if target.layout == "lora":  # K adapters on one base: train each adapter (and its score head) in turn
                    target.peft_model.set_adapter(member)
                    member = target.peft_model
                losses.append(_train_one(member, tokenizer, data.shuffle(seed=args.seed + k), member_args))
            if target.layout == "lora":
                target.peft_model.set_adapter(target.adapter_names[0])
                target.peft_model.eval()
    calibration = None
    if kind == "ensemble" and args.calibration_size:
        ref = data.select(range(min(len(data), args.calibration_size)))
        calibration = target.calibrate(list(ref["prompt"]) * 2, list(ref["chosen"]) + list(ref["rejected"]))
    after, members_after = _margins(kind, target, tokenizer, new, args.score_batch_size)
    eval_after = _margins(kind, target, tokenizer, evals, args.score_batch_size)[0] if evals is not None else None
    losses = [x for x in losses if x is not None]
    report = RefreshReport(
        num_new_pairs=len(new),
        num_replay_pairs=n_replay,
        accuracy_before=pairwise_accuracy(before),
        accuracy_after=pairwise_accuracy(after),
        eval_accuracy_before=None if eval_before is None else pairwise_accuracy(eval_before),
        eval_accuracy_after=None if eval_after is None else pairwise_accuracy(eval_after),
        member_accuracy_before=None if members_before is None else [pairwise_accuracy(m) for m in members_before],
        member_accuracy_after=None if members_after is None else [pairwise_accuracy(m) for m in members_after],
        train_loss=sum(losses) / len(losses) if losses else None,
        seconds=round(time.perf_counter() - start, 2),
        calibration=calibration,
    )
    logger.info("Reward refresh: %d new + %d replayed pairs, accuracy on new pairs %.3f -> %.3f",
                report.num_new_pairs, report.num_replay_pairs, report.accuracy_before, report.accuracy_after)
    return report

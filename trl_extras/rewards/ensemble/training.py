"""``train_reward_ensemble``: K reward models (bootstrap / seeds) or K LoRA adapters, saved and calibrated."""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import logging
import os
from pathlib import Path

from ...modeling.generation import is_conversational_prompt
from ...modeling.quantization import keep_4bit_layers_differentiable
from .io import MANIFEST_FORMAT, MANIFEST_NAME, MEMBER_MARKER
from .model import RewardEnsemble

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------


def _reference_completions(dataset, limit: int):
    """(prompts, completions) of the chosen and rejected answers of up to ``limit`` preference pairs."""
    n = min(limit, len(dataset))
    rows = dataset.select(range(n))
    completions = list(rows["chosen"]) + list(rows["rejected"])
    if "prompt" in rows.column_names:
        prompts = list(rows["prompt"]) * 2
    else:  # implicit prompt: the prompt is part of chosen/rejected
        empty = [] if is_conversational_prompt(completions[0]) else ""
        prompts = [empty] * len(completions)
    return prompts, completions


def train_reward_ensemble(
    model,
    train_dataset,
    args=None,
    k: int = 4,
    processing_class=None,
    peft_config=None,
    bootstrap: bool = False,
    seeds: list[int] | None = None,
    output_dir: str | os.PathLike | None = None,
    lora_last_layers: int | None = None,
    eval_dataset=None,
    calibration_size: int | None = 512,
    penalty: str = "variance",
    coef: float = 0.1,
    callbacks=None,
    quantization_config=None,
    progress: bool = True,
) -> RewardEnsemble:
    """Train K reward models with TRL's ``RewardTrainer`` and save them as a :class:`RewardEnsemble`.

    Members differ by seed: ``RewardTrainer`` seeds the random score head it adds to a causal-LM checkpoint (the
    article's recipe: RM = SFT model + new head) and the data order; with ``bootstrap=True`` each member also
    trains on its own resample (with replacement) of ``train_dataset`` (Coste et al. found plain seeds better: a
    bootstrap sample holds ~63% distinct pairs).

    Args:
        model: path of the base model (causal LM or sequence classifier), or an instance (saved to
            ``output_dir/base`` first, since every member starts from the same weights).
        train_dataset: preference pairs in any form ``RewardTrainer`` accepts.
        args: a ``trl.RewardConfig``; each member gets a copy with its own ``seed``/``data_seed``/``output_dir``.
        k: number of members (>= 2).
        peft_config: a ``LoraConfig(task_type="SEQ_CLS")`` → the ``"lora"`` layout: K adapters (each with its own
            score head) on one frozen base; otherwise K full checkpoints.
        seeds: one seed per member (default ``args.seed + i``).
        output_dir: where the ensemble is written (default ``args.output_dir``).
        lora_last_layers: put the adapters on the last ``m`` decoder layers only (sets ``layers_to_transform``),
            which enables trunk-once scoring.
        calibration_size: calibrate on the chosen and rejected completions of this many training pairs (None: skip).
        penalty, coef: the ensemble's default penalty for ``__call__``.
        quantization_config: e.g. ``trl.get_quantization_config(model_args)`` for QLoRA members (passed to
            ``RewardTrainer``; the returned ensemble reloads the base with it).

    Returns:
        The saved ensemble, reloaded from ``output_dir`` (manifest: members, layout, seeds, calibration).
    """
    from trl import RewardConfig

    from ...utils.validation import check_finite_fields

    if k < 2:
        raise ValueError(f"An ensemble needs k >= 2 members, got k={k}.")
    if args is None:
        args = RewardConfig(output_dir=str(output_dir or "reward_ensemble"))
    check_finite_fields(args)  # a plain RewardConfig checks none of its floats (max_grad_norm=nan...)
    output_dir = Path(output_dir or args.output_dir)
    seeds = [args.seed + i for i in range(k)] if seeds is None else [int(s) for s in seeds]
    if len(seeds) != k or len(set(seeds)) != k:
        raise ValueError(f"Need {k} distinct seeds, got {seeds}.")
    if lora_last_layers is not None and peft_config is None:
        raise ValueError("`lora_last_layers` needs a `peft_config` (LoraConfig with task_type='SEQ_CLS').")
    if peft_config is not None and str(getattr(peft_config, "task_type", "")).split(".")[-1] != "SEQ_CLS":
        raise ValueError(
            "The LoRA ensemble needs `task_type='SEQ_CLS'` in the peft config, so each adapter trains and saves its "
            f"own score head; got task_type={getattr(peft_config, 'task_type', None)!r}."
        )
    if len(train_dataset) == 0:
        raise ValueError("train_dataset is empty.")
    from ..pairs import validate_preference_dataset

    validate_preference_dataset(train_dataset, "train_dataset")
    validate_preference_dataset(eval_dataset, "eval_dataset")
    from ...utils.resume import OutputDirLock, check_writable

    check_writable(output_dir)  # before any training: a read-only directory fails now, not after the first member
    with OutputDirLock(output_dir, "reward-ensemble training"):  # a second writer is refused while this one runs
        return _train_members(model, train_dataset, args, k, processing_class, peft_config, bootstrap, seeds,
                              output_dir, lora_last_layers, eval_dataset, calibration_size, penalty, coef, callbacks,
                              quantization_config, progress)


MEMBER_KIND = "ensemble_member"


def _train_members(model, train_dataset, args, k, processing_class, peft_config, bootstrap, seeds, output_dir,
                   lora_last_layers, eval_dataset, calibration_size, penalty, coef, callbacks, quantization_config,
                   progress) -> RewardEnsemble:  # fmt: skip
    import numpy as np
    from transformers import AutoConfig, AutoTokenizer
    from trl import RewardTrainer

    from ...utils.finite import NonFiniteGuardMixin
    from ...utils.offline import NoTelemetryMixin
    from ...utils.progress import progress_bar
    from ..pairs import validate_preference_dataset

    class GuardedRewardTrainer(NoTelemetryMixin, NonFiniteGuardMixin, RewardTrainer):
        """TRL's RewardTrainer with the package's non-finite guard (utils.finite; action: ``error``)."""

    if not isinstance(model, (str, os.PathLike)):
        if processing_class is None:
            raise ValueError("Pass `processing_class` when `model` is an instance.")
        model.save_pretrained(output_dir / "base")
        processing_class.save_pretrained(output_dir / "base")
        model = output_dir / "base"
    model_path = str(Path(model).resolve()) if Path(model).exists() else str(model)
    if processing_class is None:
        processing_class = AutoTokenizer.from_pretrained(model_path)
    for name, data in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
        validate_preference_dataset(data, name, processing_class=processing_class)  # distinct texts, same tokens?

    layout = "separate" if peft_config is None else "lora"
    if lora_last_layers is not None:
        num_layers = AutoConfig.from_pretrained(model_path).get_text_config().num_hidden_layers
        if not 1 <= lora_last_layers <= num_layers:
            raise ValueError(f"lora_last_layers must be in [1, {num_layers}], got {lora_last_layers}.")
        peft_config = copy.deepcopy(peft_config)
        peft_config.layers_to_transform = list(range(num_layers - lora_last_layers, num_layers))

    from ...utils.atomic import atomic_write_json, fsync_tree, kill_point
    from ...utils.fingerprint import model_identity, settings_fingerprint
    from ...utils.resume import invalidate, read_manifest, verify, write_manifest

    # The manifest is written last (after calibration): remove a stale one first, so an interrupted rerun never
    # leaves a directory that loads as a finished ensemble.
    (output_dir / MANIFEST_NAME).unlink(missing_ok=True)
    shared_settings = settings_fingerprint(
        model=model_identity(model_path), layout=layout, data=train_dataset, bootstrap=bootstrap, peft=peft_config,
        learning_rate=args.learning_rate, num_train_epochs=args.num_train_epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, max_length=getattr(args, "max_length", None),
    )
    pad_token_id = None
    members, histories = [], []
    for i, seed in enumerate(progress_bar(seeds, desc="reward ensemble members", enabled=progress)):
        rel = f"member_{i}" if layout == "separate" else f"adapters/member_{i}"
        marker = output_dir / rel / MEMBER_MARKER
        settings = {**shared_settings, "seed": seed}
        # a member finished by an earlier (interrupted) run with the same settings: reuse it when its manifest
        # (utils.resume, written last) verifies by sha256 and holds these settings
        if verify(output_dir / rel, MEMBER_KIND) is None:
            try:
                done = json.loads(marker.read_text())
            except (OSError, json.JSONDecodeError):
                done = {}
            if (read_manifest(output_dir / rel) or {}).get("fingerprint") == settings:
                logger.info("Reward ensemble member %d: reusing the finished member in %s", i, output_dir / rel)
                histories.append(done.get("metrics", {}))
                members.append(rel)
                pad_token_id = done.get("pad_token_id", pad_token_id)
                continue
        if (output_dir / rel).exists():
            invalidate(output_dir / rel)
            marker.unlink(missing_ok=True)
        member_args = dataclasses.replace(
            args, seed=seed, data_seed=seed, output_dir=str(output_dir / "runs" / f"member_{i}")
        )
        data = train_dataset
        if bootstrap:
            rng = np.random.default_rng(seed)
            data = train_dataset.select(rng.integers(0, len(train_dataset), size=len(train_dataset)).tolist())
        trainer = GuardedRewardTrainer(
            model=model_path,
            args=member_args,
            train_dataset=data,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=copy.deepcopy(peft_config),
            callbacks=callbacks,
            quantization_config=quantization_config,
        )
        keep_4bit_layers_differentiable(trainer.model)  # evaluations run no-grad forwards between training steps
        trainer.train()
        if layout == "separate":
            trainer.save_model(str(output_dir / rel))
        else:
            trainer.model.save_pretrained(str(output_dir / rel))
            # The base's config must carry the pad id the member pooled with.
            pad_token_id = trainer.model.config.get_text_config().pad_token_id
        metrics = {key: v for key, v in trainer.state.log_history[-1].items() if isinstance(v, (int, float))}
        fsync_tree(output_dir / rel)
        atomic_write_json(marker, {"settings": settings, "metrics": metrics, "pad_token_id": pad_token_id})
        write_manifest(output_dir / rel, MEMBER_KIND, fingerprint=settings)  # last: the member is complete
        kill_point(f"ensemble_member_saved:{i}")
        histories.append(metrics)
        members.append(rel)
        del trainer
        gc.collect()

    if layout == "lora":
        processing_class.save_pretrained(output_dir / "tokenizer")
    else:
        pad_token_id = None
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "layout": layout,
        "members": members,
        "adapter_names": [Path(m).name for m in members] if layout == "lora" else [],
        "base_model": model_path,
        "pad_token_id": pad_token_id,
        "calibration": None,
        "penalty": penalty,
        "coef": coef,
        "seeds": seeds,
        "bootstrap": bootstrap,
        "lora_last_layers": lora_last_layers,
        "train_metrics": histories,
        # calibration_size=None is the user's explicit opt-out: later loads may use the ensemble uncalibrated
        "allow_uncalibrated": not calibration_size,
    }
    load_kwargs = _load_kwargs(args)
    if quantization_config is not None:
        load_kwargs["quantization_config"] = quantization_config
    ensemble = RewardEnsemble._from_manifest(output_dir, manifest, None, None, 64, load_kwargs, None,
                                             allow_uncalibrated=not calibration_size)  # fmt: skip
    if calibration_size:
        prompts, completions = _reference_completions(train_dataset, calibration_size)
        kill_point("ensemble_calibration")
        manifest["calibration"] = ensemble.calibrate(prompts, completions)
    fsync_tree(output_dir)
    atomic_write_json(output_dir / MANIFEST_NAME, manifest)  # last: the directory is now a complete ensemble
    return ensemble



def _load_kwargs(args) -> dict:
    """``from_pretrained`` kwargs to reload members as they were trained (dtype / quantization)."""
    kwargs = dict(getattr(args, "model_init_kwargs", None) or {})
    kwargs.pop("num_labels", None)
    return kwargs


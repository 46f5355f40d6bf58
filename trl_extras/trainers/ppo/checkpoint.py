"""PPOTrainer checkpoints on disk, on the shared resume protocol (``trl_extras.utils.resume``).

A checkpoint is the Trainer's files plus ``value_model.safetensors`` (the value model's trainable weights),
``ppo_state.json`` (β, reward statistics) and, when it was saved inside a rollout batch's epochs,
``rollout_buffer_<process>.pt`` (that batch and its epoch permutations: a resume continues the same batch instead
of sampling a new one, so it ends exactly where the uninterrupted run does). ``resume_manifest.json`` is written
last: the sha256 of every file, the settings fingerprint (:func:`ppo_fingerprint`) and the run's lineage.
"""

from __future__ import annotations

import logging
import os
import warnings

logger = logging.getLogger(__name__)

VALUE_STATE_FILE = "value_model.safetensors"
PPO_STATE_FILE = "ppo_state.json"
CHECKPOINT_KIND = "ppo_checkpoint"


def rollout_buffer_file(process_index: int) -> str:
    return f"rollout_buffer_{process_index}.pt"


# PPOConfig's own fields that do not change what is computed (where and how often to log, memory-only chunking)
_NON_SHAPING = {"logging_steps", "gradient_checkpointing", "remove_unused_columns", "generation_chunk_size",
                "exact_kl_chunk_size", "log_completions", "num_completions_to_print", "log_unique_prompts",
                "resume_allow_changes"}  # fmt: skip
# TrainingArguments fields that shape the result
_TRAINING_FIELDS = (
    "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "optim",
    "optim_args", "num_train_epochs", "max_steps", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps",
    "warmup_ratio", "seed", "data_seed", "per_device_train_batch_size", "gradient_accumulation_steps", "bf16", "fp16",
    "world_size",
)  # fmt: skip
#: Settings a resume cannot adapt to, whatever ``resume_allow_changes`` says: the checkpoint's optimizer/scheduler
#: state, data position, rollout batch and per-process RNG states were made for the old value.
FIXED_ON_RESUME = {
    "world_size": "the global batch, the data position and the per-process RNG states belong to the old number of "
                  "processes",
    "per_device_train_batch_size": "the batch layout and the data position change",
    "gradient_accumulation_steps": "the batch layout and the step count change",
    "num_mini_batches": "the batch layout and the step count change",
    "steps_per_generation": "the batch layout and the step count change",
    "generation_batch_size": "the batch layout and the step count change",
    "num_generations": "the batch layout and the step count change",
    "num_ppo_epochs": "the step count per rollout changes",
    "max_steps": "the restored learning-rate schedule was built for the old length (a step at lr 0, or on the old "
                 "schedule); to train longer, start a new run from the checkpoint's weights",
    "num_train_epochs": "the restored learning-rate schedule was built for the old length",
    "lr_scheduler_type": "the restored scheduler is of the old type",
    "lr_scheduler_kwargs": "the restored scheduler has the old parameters",
    "warmup_steps": "the restored schedule has the old warmup",
    "warmup_ratio": "the restored schedule has the old warmup",
    "value_warmup_steps": "the restored schedule has the old warmup",
    "seed": "the data order differs: a resume would repeat and skip prompts",
    "data_seed": "the data order differs: a resume would repeat and skip prompts",
}  # fmt: skip


def ppo_inputs_identity(model, reward_funcs, ref_model, value_model, peft_config, value_peft_config, train_dataset,
                        reward_weights) -> dict:  # fmt: skip
    """What the trainer was built from, by content (called in ``__init__`` with the raw arguments, before any
    weights move): the initial policy (and so the KL reference), the reference, the value model, the rewards."""
    from ...utils.fingerprint import describe, model_identity, peft_settings, rewards_identity

    return {
        "model": model_identity(model),
        "ref_model": model_identity(ref_model),  # None: the initial policy
        "value_model": model_identity(value_model),
        "reward_funcs": rewards_identity(reward_funcs, reward_weights),
        "peft_config": peft_settings(peft_config),
        "value_peft_config": peft_settings(value_peft_config),
        "train_dataset": describe(train_dataset),
    }


def ppo_fingerprint(args, inputs: dict) -> dict:
    """The fingerprint stored in every checkpoint: ``inputs`` (:func:`ppo_inputs_identity`) plus every PPOConfig
    field that shapes the result and the TrainingArguments ones (``_TRAINING_FIELDS``)."""
    from dataclasses import fields

    from transformers import TrainingArguments

    from ...utils.fingerprint import settings_fingerprint
    from .config import PPOConfig

    own = {f.name for f in fields(PPOConfig)} - {f.name for f in fields(TrainingArguments)} - _NON_SHAPING
    own |= {"learning_rate", "disable_dropout", "model_init_kwargs"} & {f.name for f in fields(PPOConfig)}
    values = {name: getattr(args, name, None) for name in sorted(own)}
    values.update({name: getattr(args, name, None) for name in _TRAINING_FIELDS})
    fingerprint = settings_fingerprint(**values)
    fingerprint.update(inputs)  # already described
    return fingerprint


def checkpoint_problem(path: str, hashes: bool = True) -> str | None:
    """Why ``path`` is not a complete PPOTrainer checkpoint (None when it is): no manifest (the save did not
    finish, or it is not a PPOTrainer checkpoint), or a file missing, truncated or corrupted (sha256)."""
    from ...utils.resume import MANIFEST_FILE, verify

    if not os.path.isfile(os.path.join(path, MANIFEST_FILE)) and os.path.isfile(os.path.join(path, PPO_STATE_FILE)):
        legacy = _legacy_problem(path)
        if legacy != "not legacy":
            return legacy
    return verify(path, CHECKPOINT_KIND, hashes=hashes)


def _legacy_problem(path: str) -> str | None:
    """Checkpoints written before the manifest: ``ppo_state.json`` (written last) lists every file's size. Such a
    checkpoint is accepted by that size check (it has no content hashes and no settings fingerprint to compare)."""
    import json

    try:
        with open(os.path.join(path, PPO_STATE_FILE)) as f:
            files = json.load(f).get("files")
    except (OSError, ValueError):
        return "not legacy"
    if not isinstance(files, dict):
        return "not legacy"
    for name, size in files.items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            return f"{name} is missing"
        if os.path.getsize(file) != size:
            return f"{name} is truncated or changed ({os.path.getsize(file)} bytes, {size} when saved)"
    return None


def latest_complete_checkpoint(output_dir: str) -> str:
    """The checkpoint ``resume_from_checkpoint=True`` continues: the newest complete one on the current run's
    lineage (``utils.resume.select_checkpoint``); incomplete ones are skipped with a warning."""
    from ...utils.resume import select_checkpoint

    def warn(message):
        warnings.warn(message, stacklevel=4)
        logger.warning(message)

    return select_checkpoint(output_dir, CHECKPOINT_KIND, warn=warn, problem=checkpoint_problem)

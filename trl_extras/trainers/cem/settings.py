"""The fingerprint of a CEM run's settings (``cem_settings.json``, and each round's ``resume_manifest.json``): a
resumed run must shape rounds the same way."""

from __future__ import annotations

ROUND_KIND = "cem_round"
SETTINGS_FILE = "cem_settings.json"
# CEMConfig / SFTConfig fields that do not change what a round samples, selects or trains on
_NON_SHAPING = {"resume", "resume_allow_changes", "plot", "eval_num_generations", "entropy_batch_size", "log_completions",
                "num_completions_to_print", "log_unique_prompts"}
_TRAINING_FIELDS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "lr_scheduler_type", "warmup_steps", "warmup_ratio", "weight_decay", "max_grad_norm", "seed", "max_length",
    "completion_only_loss", "model_init_kwargs",
)  # fmt: skip


def cem_settings(args, model, reward_funcs, train_dataset, sft_dataset, peft_config) -> dict:
    """The fingerprint of everything that shapes a CEM round's samples, elites and fine-tuning."""
    from dataclasses import fields

    from trl import SFTConfig

    from ...utils.fingerprint import model_identity, rewards_identity, settings_fingerprint
    from .config import CEMConfig

    own = {f.name for f in fields(CEMConfig)} - {f.name for f in fields(SFTConfig)} - _NON_SHAPING
    if args.temperature_end is None and args.elite_quantile_end is None:
        # no schedule over the rounds: round r's data does not depend on how many rounds follow (extending a
        # finished run by more rounds is a valid resume and gives what the longer run would have)
        own.discard("num_rounds")
    values = {name: getattr(args, name) for name in sorted(own)}
    values.update({name: getattr(args, name, None) for name in _TRAINING_FIELDS})
    fingerprint = settings_fingerprint(
        train_dataset=train_dataset, sft_dataset=sft_dataset, peft_config=peft_config, **values,
    )
    # the initial model and the rewards by content: two closures of one factory (the testbed's gold and heuristic
    # rewards) differ, `gold` and `[gold]` are the same, a retrained model at the same path differs
    fingerprint["model"] = model_identity(model)
    fingerprint["reward_funcs"] = rewards_identity(reward_funcs)
    return dict(sorted(fingerprint.items()))

"""The model card at the end of a CLI run, as TRL's own scripts (``trl/scripts/sft.py``...) write it: the trainer's
``create_model_card`` with the training dataset's name, or ``push_to_hub(dataset_name=...)`` when
``--push_to_hub`` is set (which writes the same card and uploads it with the model)."""

from __future__ import annotations

import os
import re
from pathlib import Path

TESTBED = "testbed"


def card_dataset_name(dataset_name: str | None) -> str | None:
    """The name a model card may cite: a Hub dataset id. ``None`` for the built-in testbed and for local files or
    directories (the card links ``https://huggingface.co/datasets/<name>`` and lists it in its metadata)."""
    if not dataset_name or dataset_name == TESTBED or os.path.exists(dataset_name):
        return None
    return dataset_name


def write_model_card(trainer, training_args, dataset_name: str | None, metrics: dict | None = None) -> None:
    """Write ``README.md`` in ``output_dir`` naming ``dataset_name`` (see :func:`card_dataset_name`); with
    ``push_to_hub`` push the model and the card instead. Call after ``trainer.save_model``.

    A local base model and a local data file are named as such (TRL's template would link
    ``huggingface.co/None`` and a Hub dataset); a PPO card lists the PPO settings; ``metrics`` (the final metrics
    of :func:`~trl_extras.scripts.utils.save_evaluate_report`) are listed in a table."""
    name = card_dataset_name(dataset_name)
    if getattr(training_args, "push_to_hub", False):
        trainer.push_to_hub(dataset_name=name)
        return
    is_main = getattr(trainer, "is_world_process_zero", None)  # a Trainer; CEMTrainer keeps `_is_main`
    if not (is_main() if is_main is not None else getattr(trainer, "_is_main", True)):
        return
    hub_model_id = getattr(training_args, "hub_model_id", None)
    model_name = hub_model_id.split("/")[-1] if hub_model_id else Path(training_args.output_dir).name
    trainer.create_model_card(model_name=model_name, dataset_name=name)
    card = Path(training_args.output_dir) / "README.md"
    if card.is_file():
        text = localize_card(card.read_text(encoding="utf-8"), _base_model_path(trainer), dataset_name)
        text += card_sections(training_args, metrics)
        card.write_text(text, encoding="utf-8")


def _base_model_path(trainer) -> str | None:
    model = getattr(trainer, "model", None)
    base = getattr(model, "get_base_model", None)
    config = getattr(base() if callable(base) else model, "config", None)
    return getattr(config, "_name_or_path", None) or None


_BASE_SENTENCE = re.compile(r"(This model is a fine-tuned version of )(\[None\]\(https://huggingface\.co/None\))?([^.\n]*)\.")


def localize_card(text: str, base_model: str | None, dataset_name: str | None) -> str:
    """TRL's card text with a local base model (a folder) and a local data file named as local paths, not as Hub
    links: ``"fine-tuned version of the local model `out/sft` on the local data file `data.jsonl`."``."""
    local_data = bool(dataset_name) and dataset_name != TESTBED and os.path.exists(dataset_name)
    testbed_data = dataset_name in (None, TESTBED)

    def repl(match):
        base = match.group(2)
        if base is not None:  # TRL found no Hub id: the base model is a local folder (or unknown)
            base = f"the local model `{base_model}`" if base_model else "a local model"
        else:
            base = ""
        rest = match.group(3)
        if local_data:
            rest += f" on the local data file `{dataset_name}`"
        elif testbed_data and dataset_name == TESTBED:
            rest += " on the trl_extras testbed's built-in data"
        return f"{match.group(1)}{base}{rest}."

    text = _BASE_SENTENCE.sub(repl, text, count=1)
    return text.replace("base_model: None\n", "")


# PPOConfig fields a reader needs to reproduce a run (TRL's trainer cards list the method; these the settings)
_PPO_SETTINGS = ("learning_rate", "value_learning_rate", "num_ppo_epochs", "num_mini_batches", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "max_steps", "max_completion_length", "temperature", "kl_estimator",
                 "kl_coef", "gamma", "lam", "cliprange", "cliprange_value", "vf_coef", "advantage_normalization",
                 "whiten_rewards", "missing_eos_penalty", "reward_weights", "seed")  # fmt: skip


def card_sections(training_args, metrics: dict | None) -> str:
    """Markdown appended to the card: ``## PPO settings`` (for a PPOConfig) and ``## Final metrics``."""
    out = []
    if type(training_args).__name__ == "PPOConfig":
        rows = [(k, getattr(training_args, k)) for k in _PPO_SETTINGS if hasattr(training_args, k)]
        out += ["", "## PPO settings", "", "| setting | value |", "|---|---|"]
        out += [f"| `{k}` | {v} |" for k, v in rows]
    flat = {}
    for key in ("final_metrics", "final_eval"):
        flat.update({k: v for k, v in ((metrics or {}).get(key) or {}).items() if isinstance(v, (int, float))})
    if flat:
        out += ["", "## Final metrics", "", "The last logged value of each metric (`trainer.state.log_history`; "
                "`eval_*`: the final evaluation).", "", "| metric | value |", "|---|---|"]
        out += [f"| `{k}` | {v:.4g} |" for k, v in flat.items()]
    return ("\n".join(out) + "\n") if out else ""

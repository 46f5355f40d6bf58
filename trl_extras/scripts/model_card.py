"""The model card at the end of a CLI run, as TRL's own scripts (``trl/scripts/sft.py``...) write it: the trainer's
``create_model_card`` with the training dataset's name, or ``push_to_hub(dataset_name=...)`` when
``--push_to_hub`` is set (which writes the same card and uploads it with the model)."""

from __future__ import annotations

import os
from pathlib import Path

TESTBED = "testbed"


def card_dataset_name(dataset_name: str | None) -> str | None:
    """The name a model card may cite: a Hub dataset id. ``None`` for the built-in testbed and for local files or
    directories (the card links ``https://huggingface.co/datasets/<name>`` and lists it in its metadata)."""
    if not dataset_name or dataset_name == TESTBED or os.path.exists(dataset_name):
        return None
    return dataset_name


def write_model_card(trainer, training_args, dataset_name: str | None) -> None:
    """Write ``README.md`` in ``output_dir`` naming ``dataset_name`` (see :func:`card_dataset_name`); with
    ``push_to_hub`` push the model and the card instead. Call after ``trainer.save_model``."""
    name = card_dataset_name(dataset_name)
    if getattr(training_args, "push_to_hub", False):
        trainer.push_to_hub(dataset_name=name)
        return
    if not trainer.is_world_process_zero():
        return
    hub_model_id = getattr(training_args, "hub_model_id", None)
    model_name = hub_model_id.split("/")[-1] if hub_model_id else Path(training_args.output_dir).name
    trainer.create_model_card(model_name=model_name, dataset_name=name)

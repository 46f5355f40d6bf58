"""Helpers shared by the subcommands: TrlParser parsing with ``--config``, evaluation / preference splits."""

from __future__ import annotations

import sys

from ..utils.data import MissingSplitError, load_dataset_from_spec

__all__ = ["MissingSplitError", "load_dataset_from_spec", "load_eval_split", "load_preference_split", "parse_args"]


#: Flags a subcommand used to take, and their new names: an old flag is refused with the new name in the message.
#: ``generation_batch_size`` meant the generate() chunk size here, while in TRL it means completions per rollout batch.
RENAMED_FLAGS = {"generation_batch_size": "generation_chunk_size"}


def parse_args(dataclass_types, argv: list[str] | None, prog: str):
    """Parse ``argv`` into ``dataclass_types`` with ``trl.TrlParser`` (supports ``--config recipe.yaml``).

    Without a terminal (a log file) ``disable_tqdm`` defaults to True — the Trainer then prints one line per log
    (``PrinterCallback``) instead of bar frames — and the libraries' own bars are off; a recipe or flag still wins."""
    from trl import TrlParser

    from ..utils.progress import disable_tqdm_default, quiet_library_bars

    parser = TrlParser(dataclass_types, prog=f"trl-extras {prog}")
    quiet_library_bars()
    if disable_tqdm_default() and any(a.dest == "disable_tqdm" for a in parser._actions):
        parser.set_defaults(disable_tqdm=True)  # below the recipe's values and the flags (TrlParser's order)
    old = sys.argv
    try:
        sys.argv = [f"trl-extras {prog}", *(argv or [])]
        *parsed, unknown = parser.parse_args_and_config(return_remaining_strings=True)
        if unknown:  # argparse's own message and exit code 2, naming the flag (TrlParser raises a bare ValueError)
            for item in map(str, unknown):
                name = item.lstrip("-").split("=")[0]
                if name in RENAMED_FLAGS:
                    parser.error(f"--{name} was renamed --{RENAMED_FLAGS[name]} (sequences per generate() call)")
            parser.error(f"unrecognized arguments (flags or recipe keys): {' '.join(map(str, unknown))}")
        return tuple(parsed)
    finally:
        sys.argv = old


def load_eval_split(name: str, config: str | None, split: str | None, flag: str = "--dataset_test_split"):
    """The evaluation split, or None -- with a message -- when the dataset has no such split: a local single-split
    file (``x.jsonl`` loads as one ``train`` split) then just works without evaluation."""
    if not split:
        return None
    try:
        return load_dataset_from_spec(name, config, split)
    except MissingSplitError as err:
        print(f"trl-extras: {err} Evaluation skipped (name a split with {flag} NAME, or {flag} '' to silence this).",
              file=sys.stderr)  # fmt: skip
        return None


def load_preference_split(name: str, config: str | None, split: str | None, flag: str = "--dataset_name"):
    """A preference split, checked by the package's one pair validator with the file/split named in errors."""
    from ..rewards.pairs import validate_preference_dataset

    data = load_dataset_from_spec(name, config, split)
    validate_preference_dataset(data, f"{flag} {name!r} (split {split or 'train'!r})")
    return data


def report_metrics(metrics: dict, output_dir: str, filename: str, should_save: bool = True, printer=print,
                   printed: dict | None = None) -> dict:  # fmt: skip
    """The subcommands' one ending: write ``metrics`` as JSON to ``output_dir/filename`` (atomically, when
    ``should_save``: the main process) and print ``printed`` (default: ``metrics``) as JSON."""
    import json
    import os

    if should_save:
        from ..utils.atomic import atomic_write_json

        os.makedirs(output_dir, exist_ok=True)
        atomic_write_json(os.path.join(output_dir, filename), metrics, default=str)
    printer(json.dumps(metrics if printed is None else printed, indent=2, default=str))
    return metrics


def save_evaluate_report(trainer, output_dir: str, filename: str, extra: dict | None = None,
                         dataset_name: str | None = None) -> dict:
    """Save the model (and tokenizer) and its model card naming ``dataset_name`` (or push both with
    ``push_to_hub``, see :func:`~trl_extras.scripts.model_card.write_model_card`), evaluate on the trainer's eval set
    when it has one (``final_eval``), then :func:`report_metrics` ``extra`` + the evaluation: the ending shared by
    the trainer subcommands."""
    from .model_card import write_model_card

    trainer.save_model(output_dir)
    write_model_card(trainer, trainer.args, dataset_name)
    metrics = dict(extra or {})
    if trainer.eval_dataset is not None:
        metrics["final_eval"] = trainer.evaluate()
    return report_metrics(metrics, output_dir, filename, trainer.args.should_save, trainer.accelerator.print)

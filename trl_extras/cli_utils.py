"""Helpers shared by the subcommands: TrlParser parsing with ``--config`` and offline-friendly defaults."""

from __future__ import annotations

import sys


def parse_args(dataclass_types, argv: list[str] | None, prog: str):
    """Parse ``argv`` into ``dataclass_types`` with ``trl.TrlParser`` (supports ``--config recipe.yaml``)."""
    from trl import TrlParser

    parser = TrlParser(dataclass_types, prog=f"trl-extras {prog}")
    old = sys.argv
    try:
        sys.argv = [f"trl-extras {prog}", *(argv or [])]
        *parsed, unknown = parser.parse_args_and_config(return_remaining_strings=True)
        if unknown:  # argparse's own message and exit code 2, naming the flag (TrlParser raises a bare ValueError)
            parser.error(f"unrecognized arguments (flags or recipe keys): {' '.join(map(str, unknown))}")
        return tuple(parsed)
    finally:
        sys.argv = old


def load_dataset_from_spec(name: str, config: str | None = None, split: str | None = "train"):
    """A dataset split from a Hub name, a ``save_to_disk`` directory or a data file (.json/.jsonl/.parquet/.csv).

    The one loader behind every subcommand and the pipeline (``"name_or_path"`` plus ``split``).
    """
    import os

    from datasets import DatasetDict, load_dataset, load_from_disk

    if os.path.isdir(name) and (
        os.path.isfile(os.path.join(name, "dataset_info.json"))
        or os.path.isfile(os.path.join(name, "dataset_dict.json"))
    ):
        data = load_from_disk(name)
    elif os.path.isfile(name):
        ext = name.rsplit(".", 1)[-1].lower()
        builder = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv"}.get(ext)
        if builder is None:
            raise ValueError(f"Unsupported data file {name!r}: use .json/.jsonl/.parquet/.csv or a dataset directory.")
        data = load_dataset(builder, data_files=name)
    else:
        data = load_dataset(name, name=config)
    if isinstance(data, DatasetDict):
        split = split or "train"
        if split not in data:
            raise ValueError(f"Dataset {name!r} has splits {list(data)}, not {split!r}.")
        return data[split]
    return data

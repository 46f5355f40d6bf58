"""Loading a dataset split from a Hub name, a ``save_to_disk`` directory or a data file."""

from __future__ import annotations


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
            raise MissingSplitError(f"Dataset {name!r} has splits {list(data)}, not {split!r}.")
        return data[split]
    return data


class MissingSplitError(ValueError):
    """The dataset exists but has no such split."""

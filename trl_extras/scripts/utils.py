"""Helpers shared by the subcommands: TrlParser parsing with ``--config``, evaluation / preference splits."""

from __future__ import annotations

import sys

from ..utils.data import MissingSplitError, load_dataset_from_spec

__all__ = ["MissingSplitError", "load_dataset_from_spec", "load_eval_split", "load_preference_split", "parse_args"]


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

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
        return parser.parse_args_and_config()
    finally:
        sys.argv = old

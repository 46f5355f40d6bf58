"""``trl-extras iterate``: rounds of RL → compare with the baseline → label (judge or people) → refresh the RM.

The loop itself is :mod:`trl_extras.refresh.iterate`."""

from __future__ import annotations

import os


def main(argv=None) -> int:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from ..refresh.iterate import IterateConfig, run_iterate
    from .utils import parse_args

    (config,) = parse_args([IterateConfig], argv, "iterate")
    run_iterate(config)
    return 0

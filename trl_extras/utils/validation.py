"""Argument checks that name the field and say what is expected (used by the configs' ``__post_init__`` and the
subcommands), so bad input fails at construction instead of deep inside torch, datasets or transformers."""

from __future__ import annotations

import math
import numbers
import os

__all__ = ["check_finite_fields", "check_model_path", "check_number"]


def check_number(
    owner,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> None:
    """Raise ``ValueError`` unless ``owner.<name>`` is a (finite) number in the given range.

    ``low``/``high`` bound the value (inclusive unless ``low_open``/``high_open``); ``integer`` requires an int;
    ``optional`` lets ``None`` through. Fields the owner does not have are skipped (configs evolve).
    """
    if not hasattr(owner, name):
        return
    value = getattr(owner, name)
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(value, bool)
    if not ok_type or (not integer and not math.isfinite(float(value))):
        raise ValueError(f"{name} must be {kind}, got {value!r} ({type(value).__name__}).")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ValueError(f"{name} must be in {span}, got {value!r}.")


def _looks_local(value: str) -> bool:
    return (
        os.path.isabs(value)
        or value.startswith((".", "~"))
        or value.count("/") > 1
        or value.endswith((".safetensors", ".bin", ".pt", ".json"))
        or "\\" in value
    )


def check_model_path(value, field: str) -> None:
    """Raise ``ValueError`` naming ``field`` when ``value`` is meant as a local path (absolute, relative with ./,
    nested) and does not exist, instead of the Hub client's "Repo id must be in the form ..." error later."""
    if value is None or not isinstance(value, (str, os.PathLike)):
        return
    text = os.fspath(value)
    if os.path.exists(os.path.expanduser(text)):
        return
    if _looks_local(text):
        raise ValueError(f"{field}: {text!r} does not exist. Expected a model directory (or a Hub id 'org/name').")


def check_finite_fields(config, allow_inf: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> None:
    """Raise ``ValueError`` naming the field when any float field of the dataclass ``config`` is NaN (anywhere) or
    ±inf (except the fields in ``allow_inf``, where inf means "no limit"). One check for every config float -- the
    package's own fields and the inherited Trainer/TRL ones (``max_grad_norm``, ``adam_epsilon``, ``warmup_ratio``,
    ``beta``, ``epsilon`` ...): ``max_grad_norm=nan`` would otherwise silently turn clipping off (``nan > 0`` is
    False) and a NaN coefficient reaches every loss. ``skip``: fields validated elsewhere. Call it first thing in a
    config's ``__post_init__``."""
    import dataclasses

    for f in dataclasses.fields(config):
        if f.name in skip or not hasattr(config, f.name):
            continue
        value = getattr(config, f.name)
        if not isinstance(value, float) or math.isfinite(value):
            continue
        if math.isinf(value) and f.name in allow_inf:
            continue
        raise ValueError(
            f"{type(config).__name__}.{f.name} must be a finite number, got {value!r}"
            + (" (inf is allowed: it means no limit)." if f.name in allow_inf else ".")
        )

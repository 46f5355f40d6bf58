"""Fingerprints of the settings that shape saved state, so a resumed run refuses state made under other settings.

A fingerprint is a flat ``{field: value}`` dict of JSON-able values (stored next to the state) plus its hash;
:func:`changed_fields` compares a stored one with the current one and names what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

__all__ = [
    "changed_fields", "check_fingerprint", "describe", "fingerprint_hash", "peft_settings", "settings_fingerprint"
]


def describe(value):
    """A JSON-able, stable description of a setting (callables by qualified name, datasets by fingerprint)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if isinstance(value, (set, frozenset)):  # a set's order depends on the hash seed: sort it
        return sorted((describe(v) for v in value), key=str)
    if hasattr(value, "peft_type") and hasattr(value, "to_dict"):  # a peft config
        return peft_settings(value)
    if isinstance(value, dict):
        return {str(k): describe(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    fingerprint = getattr(value, "_fingerprint", None)  # datasets.Dataset: content hash of its transforms
    if isinstance(fingerprint, str):
        return f"dataset:{fingerprint}:{len(value)}"
    metadata = getattr(value, "metadata", None)
    if isinstance(metadata, dict) and metadata.get("directory"):  # a saved RewardEnsemble
        return f"{type(value).__name__}:{metadata['directory']}:{getattr(value, 'penalty', '')}:{getattr(value, 'coef', '')}"
    name_or_path = getattr(getattr(value, "config", None), "_name_or_path", None)
    if name_or_path:
        return f"{type(value).__name__}:{name_or_path}"
    func = getattr(value, "__func__", value)
    qualname = getattr(func, "__qualname__", None)
    if qualname is not None:  # functions, classes
        return f"{getattr(func, '__module__', None)}:{qualname}"
    # other objects (a torch.dtype, a config, a callable instance): type and repr without memory addresses
    return f"{type(value).__module__}.{type(value).__qualname__}:{re.sub(r' at 0x[0-9a-fA-F]+', '', repr(value))}"


# fields peft fills in when it wraps a model (the same config object is often reused for a resumed run)
_PEFT_RUNTIME_FIELDS = ("base_model_name_or_path", "revision", "peft_version", "inference_mode")


def peft_settings(peft_config) -> dict | None:
    """A peft config's settings as a stable dict (sets sorted, fields peft fills in at wrap time dropped)."""
    if peft_config is None:
        return None
    data = peft_config.to_dict()
    return describe({k: v for k, v in data.items() if k not in _PEFT_RUNTIME_FIELDS})


def settings_fingerprint(**settings) -> dict:
    """``{name: describe(value)}`` for the given settings."""
    return {name: describe(value) for name, value in sorted(settings.items())}


def fingerprint_hash(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]


def changed_fields(stored: dict, current: dict) -> dict:
    """``{field: (stored, current)}`` for every field that differs (missing on one side counts)."""
    keys = sorted(set(stored) | set(current))
    return {k: (stored.get(k), current.get(k)) for k in keys if stored.get(k) != current.get(k)}


def check_fingerprint(stored: dict | None, current: dict, where: str, redo_hint: str) -> None:
    """Raise ``ValueError`` naming the changed fields when ``stored`` (from disk) differs from ``current``."""
    if stored is None:
        return
    changed = changed_fields(stored, current)
    if changed:
        lines = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ValueError(
            f"{where} was made with different settings ({lines}); reusing it would mix runs. {redo_hint}"
        )

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
    "changed_fields", "check_fingerprint", "describe", "fingerprint_hash", "model_identity", "path_identity",
    "peft_settings", "reward_identity", "rewards_identity", "settings_fingerprint",
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


def check_fingerprint(
    stored: dict | None,
    current: dict,
    where: str,
    redo_hint: str,
    allow: list | tuple | None = None,
    never_allow: dict | None = None,
) -> dict:
    """Raise ``ValueError`` naming the changed fields when ``stored`` (from disk) differs from ``current``.

    ``allow``: the one documented override (``resume_allow_changes``): field names whose change is accepted, or
    ``["all"]``. ``never_allow``: ``{field: why}`` for fields no override can accept (the saved optimizer, schedule,
    data position or per-process RNG states only fit the old value). Returns the accepted changes
    ``{field: (stored, current)}`` (empty when nothing changed)."""
    if stored is None:
        return {}
    changed = changed_fields(stored, current)
    if not changed:
        return {}
    allow = list(allow or ())
    never_allow = never_allow or {}
    fixed = {k: v for k, v in changed.items() if k in never_allow}
    refused = {k: v for k, v in changed.items() if k not in fixed and "all" not in allow and k not in allow}
    if fixed:
        lines = "; ".join(f"{k}: {old!r} -> {new!r} ({never_allow[k]})" for k, (old, new) in fixed.items())
        raise ValueError(
            f"{where} was made with different settings that a resume cannot adapt to: {lines}. No override accepts "
            f"these. {redo_hint}"
        )
    if refused:
        lines = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ValueError(
            f"{where} was made with different settings ({lines}); reusing it would mix runs. {redo_hint} To accept "
            f"the change knowingly, list the fields in `resume_allow_changes` (e.g. resume_allow_changes="
            f"{sorted(refused)!r})."
        )
    return changed


# ---------------------------------------------------------------------------------------------------------------
# Identity BY CONTENT of rewards, models and paths: two rewards that compute different things never look the same
# (two closures of one factory, two lambdas, two instances of one callable class with other parameters), and two
# spellings of the same reward look the same (``gold`` and ``[gold]``, a relative and an absolute path).
# ---------------------------------------------------------------------------------------------------------------
_SMALL_FILE = 1 << 20  # files up to 1 MiB are hashed whole; larger (weights) by 16 evenly spaced 64 KiB samples + size
_SAMPLE = 1 << 16
_MAX_DEPTH = 5


def _sha(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _file_digest(path: str) -> str:
    """Content digest of one file: whole for small files; for large ones (weights) the size and 16 evenly spaced
    samples -- an identity, not an integrity check (a retrained model changes every sample; checkpoints get a full
    sha256 in their manifest, see utils.resume)."""
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= _SMALL_FILE:
            h.update(f.read())
        else:
            for i in range(16):
                f.seek((size - _SAMPLE) * i // 15)
                h.update(f.read(_SAMPLE))
    return h.hexdigest()[:16]


_SKIP_DIRS = ("runs", "completions", "logs")


def path_identity(path) -> str:
    """``name@digest`` of a local file or directory by content (files under ``runs/``, ``checkpoint-*``, hidden
    files and lock/manifest files do not count), so moving or re-spelling a path keeps its identity and retraining
    in place changes it. A string that is not a local path (a Hub id) is its own identity."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return path
    name = os.path.basename(os.path.normpath(os.path.abspath(path)))
    if os.path.isfile(path):
        return f"{name}@{_file_digest(path)}"
    digests = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS and not d.startswith("checkpoint-"))
        for file in sorted(files):
            if file.startswith(".") or file.endswith(".lock") or file == "resume_manifest.json":
                continue
            full = os.path.join(root, file)
            digests.append((os.path.relpath(full, path), _file_digest(full)))
            if len(digests) > 5000:  # not a model directory: name only past this many files
                return f"{name}@{_sha(digests)}+"
    return f"{name}@{_sha(digests)}"


def _tensor_sample(t) -> str:
    """Exact values of up to 64 evenly spaced entries of a tensor (plus shape and dtype): no arithmetic, so the same
    weights give the same digest on any device."""
    flat = t.detach().reshape(-1)
    n = flat.numel()
    picked = flat[:: max(1, n // 64)][:64] if n else flat
    return f"{tuple(t.shape)}:{t.dtype}:" + hashlib.sha256(picked.float().cpu().numpy().tobytes()).hexdigest()[:16]


def model_identity(model) -> str:
    """``Class:name_or_path@digest`` of a model instance by its weights (a sample of every tensor, exact values);
    a path string or PathLike by :func:`path_identity`; None stays None."""
    if model is None:
        return None
    if isinstance(model, (str, os.PathLike)):
        return path_identity(model)
    state = getattr(model, "state_dict", None)
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    label = f"{type(model).__name__}:{os.path.basename(str(name).rstrip('/'))}"
    if callable(state):
        try:
            try:
                tensors = state()
            except Exception:  # a partitioned (ZeRO-3) module: its local state
                tensors = {n: p for n, p in model.named_parameters()}
            samples = [(k, _tensor_sample(v)) for k, v in sorted(tensors.items()) if hasattr(v, "reshape")]
        except Exception as err:  # weights not readable here (meta device...): the class and path only
            return f"{label}@unreadable:{type(err).__name__}"
        return f"{label}@{_sha(samples)}"
    return f"{label}@{_sha(_content(model))}"


def _code_content(code, depth: int, seen: set, globals_: dict | None) -> dict:
    consts = []
    for c in code.co_consts:
        if hasattr(c, "co_code"):  # a nested function or comprehension
            consts.append(_code_content(c, depth, seen, globals_))
        else:
            consts.append(_content(c, depth + 1, seen))
    referenced = {}
    if globals_ is not None:
        for name in code.co_names:  # globals the code reads: their values shape what it computes
            if name in globals_:
                value = globals_[name]
                if isinstance(value, type(os)):  # a module: its name
                    referenced[name] = f"module:{value.__name__}"
                else:
                    referenced[name] = _content(value, depth + 1, seen)
    return {"code": hashlib.sha256(code.co_code).hexdigest()[:16], "consts": consts, "names": list(code.co_names),
            "globals": referenced}


def _content(value, depth: int = 0, seen: set | None = None):
    """A JSON-able description of ``value`` by content (code, closures, attributes, tensor samples); deterministic
    across processes (no ids, no memory addresses, sets sorted)."""
    import functools

    seen = set() if seen is None else seen
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return hashlib.sha256(value).hexdigest()[:16]
    if depth > _MAX_DEPTH:
        return f"<{type(value).__qualname__}>"
    if id(value) in seen:  # a cycle (a closure that refers to itself, a parent pointer)
        return f"<cycle {type(value).__qualname__}>"
    seen = seen | {id(value)}
    try:
        if isinstance(value, os.PathLike):
            return path_identity(value)
        if isinstance(value, (list, tuple)):
            return [_content(v, depth + 1, seen) for v in value]
        if isinstance(value, (set, frozenset)):
            return sorted((_content(v, depth + 1, seen) for v in value), key=str)
        if isinstance(value, dict):
            return {str(k): _content(v, depth + 1, seen) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
        if type(value).__module__ == "torch" and hasattr(value, "reshape"):  # a tensor
            return _tensor_sample(value)
        if type(value).__module__ == "numpy" and hasattr(value, "tobytes"):
            return f"{getattr(value, 'shape', '')}:" + hashlib.sha256(value.tobytes()).hexdigest()[:16]
        if isinstance(value, type(os)):
            return f"module:{value.__name__}"
        if isinstance(value, functools.partial):
            return {"partial": _content(value.func, depth + 1, seen), "args": _content(list(value.args), depth + 1, seen),
                    "keywords": _content(dict(value.keywords), depth + 1, seen)}
        if hasattr(value, "__func__") and hasattr(value, "__self__"):  # a bound method: the function and its object
            return {"method": _content(value.__func__, depth + 1, seen), "self": _content(value.__self__, depth + 1, seen)}
        code = getattr(value, "__code__", None)
        if code is not None and hasattr(code, "co_code"):  # a function or lambda
            cells = [c.cell_contents if _cell_full(c) else "<empty>" for c in (value.__closure__ or ())]
            return {
                "function": f"{getattr(value, '__module__', None)}:{value.__qualname__}",
                "code": _code_content(code, depth + 1, seen, getattr(value, "__globals__", None)),
                "closure": [_content(c, depth + 1, seen) for c in cells],
                "defaults": _content(list(value.__defaults__ or ()), depth + 1, seen),
                "kwdefaults": _content(dict(value.__kwdefaults__ or {}), depth + 1, seen),
            }
        if isinstance(value, type):
            return f"class:{value.__module__}:{value.__qualname__}"
        if hasattr(value, "state_dict") and hasattr(value, "named_parameters"):  # an nn.Module
            return model_identity(value)
        name_or_path = getattr(value, "name_or_path", None)
        if isinstance(name_or_path, str) and hasattr(value, "vocab_size"):  # a tokenizer: its files
            return f"{type(value).__name__}:{path_identity(name_or_path)}:{value.vocab_size}"
        fingerprint = getattr(value, "_fingerprint", None)  # datasets.Dataset: content hash of its transforms
        if isinstance(fingerprint, str):
            return f"dataset:{fingerprint}:{len(value)}"
        if hasattr(value, "peft_type") and hasattr(value, "to_dict"):
            return peft_settings(value)
        out = {"class": f"{type(value).__module__}:{type(value).__qualname__}"}
        call = type(value).__dict__.get("__call__") or next(
            (c.__dict__["__call__"] for c in type(value).__mro__ if "__call__" in c.__dict__), None
        )
        if call is not None and hasattr(call, "__code__"):  # a callable instance: its __call__ code and its state
            out["call"] = _content(call, depth + 1, seen)
        state = getattr(value, "__dict__", None)
        if isinstance(state, dict):
            out["state"] = {k: _content(v, depth + 1, seen) for k, v in sorted(state.items()) if not k.startswith("_")}
        else:
            out["repr"] = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))
        return out
    except Exception as err:  # never fail a run over a description: name the type and the problem
        return f"<{type(value).__qualname__}: {type(err).__name__}>"


def _cell_full(cell) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:
        return False
    return True


def reward_identity(fn):
    """The identity of a reward BY CONTENT, as a short readable string ``label@digest`` (for a collection: a list).

    * a path string / PathLike: the file or directory's content (:func:`path_identity`; a Hub id as it is);
    * a reward source of the contract (``trl_extras.rewards.source.RewardSource``): its ``content_identity()``, the
      identity of what it wraps (so ``gold`` and ``RewardFunctions([gold])`` compare equal);
    * a model (``nn.Module``): its weights (:func:`model_identity`);
    * a ``RewardEnsemble``: its saved directory's content (members, manifest, calibration) or its members' weights,
      plus the penalty and coefficient it applies when called;
    * anything with ``.funcs`` (and ``.weights``), e.g. ``rewards.functions.RewardFunctions``, or a list/tuple: the
      list of its members' identities (weights other than 1 as ``w*identity``);
    * a function / lambda / ``functools.partial`` / bound method / callable instance: its code (bytecode, constants,
      referenced globals), closure cell values, defaults, bound arguments and instance attributes.

    So ``gold_reward_fn`` and ``heuristic_reward_fn`` (both ``batched.<locals>.reward_fn``) differ, two lambdas or
    two instances of a callable class with other parameters differ, and moving a reward model keeps its identity.
    """
    funcs = getattr(fn, "funcs", None)
    if isinstance(fn, (list, tuple)) or isinstance(funcs, (list, tuple)):
        members = list(fn) if isinstance(fn, (list, tuple)) else list(funcs)
        weights = getattr(fn, "weights", None)
        weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
        ids = []
        for member, w in zip(members, weights):
            one = reward_identity(member)
            ids.extend(one if isinstance(one, list) else [one])  # a nested single-member list flattens
            if w != 1.0:
                ids[-1] = f"{w:g}*{ids[-1]}"
        return ids
    if isinstance(fn, (str, os.PathLike)):
        return path_identity(fn)
    own = getattr(fn, "content_identity", None)  # a reward source of the contract (rewards/source.py) names its own
    if callable(own):
        return own()
    metadata = getattr(fn, "metadata", None)
    if isinstance(metadata, dict) and hasattr(fn, "penalty"):  # a RewardEnsemble
        directory = metadata.get("directory")
        members = path_identity(directory) if directory else _sha([model_identity(m) for m in getattr(fn, "models", [])])
        return f"{type(fn).__name__}[{members}]:{getattr(fn, 'penalty', '')}:{getattr(fn, 'coef', '')}"
    if hasattr(fn, "state_dict") and hasattr(fn, "named_parameters"):
        return model_identity(fn)
    target = getattr(fn, "func", fn) if type(fn).__name__ == "partial" else fn
    target = getattr(target, "__func__", target)
    label = getattr(target, "__qualname__", None) or type(target).__qualname__
    module = getattr(target, "__module__", None) or type(target).__module__
    return f"{module}:{label}@{_sha(_content(fn))}"


def rewards_identity(reward_funcs, reward_weights=None) -> list:
    """:func:`reward_identity` of a trainer's ``reward_funcs`` argument as a list, whatever its spelling (one reward
    or a list of one compare equal); ``reward_weights`` other than 1 prefix their reward."""
    ids = reward_identity(reward_funcs)
    ids = ids if isinstance(ids, list) else [ids]
    if reward_weights is not None:
        ids = [i if float(w) == 1.0 else f"{float(w):g}*{i}" for i, w in zip(ids, reward_weights)]
    return ids

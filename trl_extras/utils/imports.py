"""The package's one importer of user code named by ``"package.module:name"`` (recipes, CLI flags), and the one
classifier of reward specifications shared by the CLI and the pipeline.

An import path is resolved like ``python -m`` resolves modules: from ``sys.path`` and from the current working
directory, so ``--gold_reward mydata.myreward:fn`` finds ``./mydata/myreward.py`` even when ``trl-extras`` runs
as a console script (whose ``sys.path`` does not contain the working directory).
"""

from __future__ import annotations

import os
import re
import sys

__all__ = ["import_object", "is_import_path", "resolve_reward_spec"]

# "pkg.module:name" (a dotted module, a colon, an attribute path); a Windows drive "C:\x" or a URL does not match
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_import_path(spec) -> bool:
    """True when ``spec`` reads as ``"module:function"`` and is not an existing file or folder."""
    return isinstance(spec, str) and bool(_IMPORT_PATH.match(spec)) and not os.path.exists(spec)


def import_object(path: str, flag: str | None = None):
    """``"package.module:name"`` → the object (``name`` may be dotted: ``module:Class.method``).

    Modules are looked up on ``sys.path`` and then in the current working directory (appended, so it never shadows
    an installed package). Raises ``ValueError`` naming ``flag`` (the option that held ``path``) and what to do when
    the module or the name is missing; errors raised *inside* the user's module propagate unchanged."""
    import importlib

    where = f"{flag} {path!r}" if flag else repr(path)
    module_name, sep, name = path.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"{where}: expected an import path 'package.module:function'.")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if not _missing_is(err, module_name):
            raise  # the module exists but imports something missing: the user's traceback is the useful one
        cwd = os.getcwd()
        if cwd in sys.path or "" in sys.path:
            raise ValueError(_not_found(where, module_name, cwd)) from err
        sys.path.append(cwd)  # as `python -m` does (there in front; here behind installed packages)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err2:
            if not _missing_is(err2, module_name):
                raise
            raise ValueError(_not_found(where, module_name, cwd)) from err2
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{where}: module {module_name!r} ({getattr(module, '__file__', '?')}) has no "
                             f"attribute {name!r}.")  # fmt: skip
        obj = getattr(obj, part)
    return obj


def _missing_is(err: ModuleNotFoundError, module_name: str) -> bool:
    """The missing module is ``module_name`` or one of its parent packages (not a dependency it imports)."""
    parts = module_name.split(".")
    return err.name in {".".join(parts[: i + 1]) for i in range(len(parts))}


def _not_found(where: str, module_name: str, cwd: str) -> str:
    rel = module_name.replace(".", os.sep)
    return (
        f"{where}: no module {module_name!r} on sys.path or in the current directory {cwd}. Run the command from the "
        f"folder that holds {rel}.py (or {rel}/__init__.py), add that folder to PYTHONPATH, or install the package."
    )


def resolve_reward_spec(spec, named: dict | None = None, flag: str = "--reward_funcs"):
    """One reward specification → what the trainers accept.

    ``spec``: a name in ``named`` (e.g. the testbed's ``gold`` / ``heuristic``) → that callable; an import path
    ``module:function`` → the imported object; anything else that is not a string (a callable, a model) → itself;
    any other string → itself, a model path (full reward model, LoRA adapter folder, ``RewardEnsemble`` folder)
    that ``RewardFunctions`` and the trainers load."""
    if not isinstance(spec, str):
        return spec
    if named and spec in named:
        return named[spec]
    if is_import_path(spec):
        return import_object(spec, flag)
    return spec

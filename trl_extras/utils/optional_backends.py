"""Optional backends stay quiet until they are used: bitsandbytes and DeepSpeed's CPU fallback.

Every trainer imports ``transformers.Trainer``, which imports ``peft``, whose ``peft.helpers`` imports bitsandbytes
at module level (peft 0.21; only a condition-number helper uses it). bitsandbytes 0.50 then, at import, tries to
fetch a CPU kernel from the Hub ("Failed to load CPU gemm_4bit_forward from kernels-community", DNS lookups when
online) and costs about a second, in runs that quantize nothing. And accelerate imports DeepSpeed (when installed)
on every ``unwrap_model``; DeepSpeed's accelerator auto-detection then warns "Setting accelerator to CPU. If you have
GPU or other accelerator, we were unable to detect it" on every CPU run.

:func:`quiet_optional_backends` (installed by ``import trl_extras``; it imports nothing itself) puts two one-shot
import hooks in front of ``sys.meta_path``:

- the first import of ``peft`` runs with bitsandbytes hidden (``sys.modules["bitsandbytes"] = None``, so peft's
  ``try: import bitsandbytes`` falls back as if it were absent). Afterwards bitsandbytes is visible again: a model
  loaded with a ``BitsAndBytesConfig`` imports it as usual, the availability caches that peft/transformers may have
  filled meanwhile are cleared, and ``peft.helpers.bnb`` becomes a proxy that imports bitsandbytes on first use.
  peft's adapter injection (``BaseTuner.inject_adapter``, wrapped) also runs with bitsandbytes hidden while it is not
  imported: its dispatch imports it only to recognise bitsandbytes layers, which a model cannot hold before
  bitsandbytes is imported, so LoRA on an unquantized model no longer imports it;
- the first import of ``deepspeed`` without ``DS_ACCELERATOR`` set, on a machine where torch sees no CUDA device,
  sets ``DS_ACCELERATOR=cpu`` for that import only: the choice DeepSpeed's auto-detection makes in the same case
  (``torch.cuda.device_count() > 0 and torch.cuda.is_available()``, else CPU), without its warning.

Nothing happens when the user imported peft/bitsandbytes/deepspeed before trl_extras, or set ``DS_ACCELERATOR``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.util
import os
import sys
from contextlib import contextmanager

__all__ = ["quiet_optional_backends"]


class _LazyBitsandbytes:
    """Stands in for ``peft.helpers.bnb``: truthy, and imports bitsandbytes at the first attribute access."""

    def __getattr__(self, name):
        return getattr(importlib.import_module("bitsandbytes"), name)


class _WrappedLoader(importlib.abc.Loader):
    """The real loader, with ``around(exec)`` run around ``exec_module``; everything else is delegated."""

    def __init__(self, loader, around):
        self._loader, self._around = loader, around

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._around(lambda: self._loader.exec_module(module))

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _OneShotHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself: hands out the real spec of ``name`` with its loader wrapped, and removes itself when
    that module is actually executed (``importlib.util.find_spec`` probes, e.g. transformers' ``is_peft_available``,
    also land here and must not use the hook up)."""

    def __init__(self, name: str, around):
        self.name, self.around = name, around

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None:
            return spec

        def around(exec_module):
            _remove(self)
            self.around(exec_module)

        spec.loader = _WrappedLoader(spec.loader, around)
        return spec


def _remove(hook) -> None:
    try:
        sys.meta_path.remove(hook)
    except ValueError:
        pass


@contextmanager
def _bitsandbytes_hidden():
    """Within: bitsandbytes looks absent (``import`` raises ImportError, ``find_spec`` returns None), unless it is
    imported already. After: visible again, and the availability answers cached meanwhile are cleared."""
    hide = "bitsandbytes" not in sys.modules
    if hide:
        sys.modules["bitsandbytes"] = None
    try:
        yield
    finally:
        if hide:
            if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None:
                del sys.modules["bitsandbytes"]
            for module, name in (("peft.import_utils", "is_bnb_4bit_available"),
                                 ("peft.import_utils", "is_bnb_available"),
                                 ("transformers.utils.import_utils", "is_bitsandbytes_available")):
                fn = getattr(sys.modules.get(module), name, None)
                if hasattr(fn, "cache_clear"):
                    fn.cache_clear()


def _peft_without_bitsandbytes(exec_module) -> None:
    with _bitsandbytes_hidden():
        exec_module()
    helpers = sys.modules.get("peft.helpers")
    if helpers is not None and getattr(helpers, "bnb", False) is None and importlib.util.find_spec("bitsandbytes"):
        helpers.bnb = _LazyBitsandbytes()
    tuners_utils = sys.modules.get("peft.tuners.tuners_utils")
    tuner = getattr(tuners_utils, "BaseTuner", None)
    if tuner is not None and not getattr(tuner.inject_adapter, "_trl_extras_quiet", False):
        tuner.inject_adapter = _inject_without_unused_bitsandbytes(tuner.inject_adapter)


def _inject_without_unused_bitsandbytes(inject_adapter):
    """peft's adapter injection asks ``is_bnb_available()`` / ``is_bnb_4bit_available()`` (which imports it) to
    recognise bitsandbytes layers. A model can only hold such layers once bitsandbytes has been imported, so while
    it is not, the injection runs with it hidden: the same dispatch, without the import."""

    @functools.wraps(inject_adapter)
    def wrapped(*args, **kwargs):
        if "bitsandbytes" in sys.modules:
            return inject_adapter(*args, **kwargs)
        with _bitsandbytes_hidden():
            return inject_adapter(*args, **kwargs)

    wrapped._trl_extras_quiet = True
    return wrapped


def _deepspeed_on_cpu_quietly(exec_module) -> None:
    set_here = False
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        if not (torch.cuda.device_count() > 0 and torch.cuda.is_available()):
            os.environ["DS_ACCELERATOR"] = "cpu"
            set_here = True
    try:
        exec_module()  # DeepSpeed picks (and caches) its accelerator during its import
    finally:
        if set_here:
            os.environ.pop("DS_ACCELERATOR", None)


_installed = False


def quiet_optional_backends() -> None:
    """Install the import hooks described in the module docstring (idempotent; imports nothing)."""
    global _installed
    if _installed:
        return
    _installed = True
    if "peft" not in sys.modules and "bitsandbytes" not in sys.modules:
        sys.meta_path.insert(0, _OneShotHook("peft", _peft_without_bitsandbytes))
    if "deepspeed" not in sys.modules and "DS_ACCELERATOR" not in os.environ:
        sys.meta_path.insert(0, _OneShotHook("deepspeed", _deepspeed_on_cpu_quietly))

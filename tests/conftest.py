"""Test set-up: offline Hugging Face, tiny local models, the cached testbed SFT policy."""


# Before any Hugging Face import: no hub, no telemetry thread.
from trl_extras.utils.offline import use_offline_env  # noqa: E402  (imports nothing from HF)

use_offline_env()

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        # the marker, not `"gpu" in item.keywords`: keywords hold every parent node's name, so a checkout in a
        # folder named "gpu" would skip the whole suite
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from trl_extras.testbed import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory):
    """Randomly initialised tiny checkpoints on disk: ``{"tokenizer", "policy", "reward"}`` paths."""
    from trl_extras.testbed import TinyModelSpec, make_tiny_checkpoints

    spec = TinyModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return make_tiny_checkpoints(tmp_path_factory.mktemp("tiny"), spec=spec)


@pytest.fixture(scope="session")
def sft_policy_path():
    """The testbed's SFT policy (built once, ~1 min, then cached under ``TRL_EXTRAS_CACHE``)."""
    from trl_extras.testbed import build_sft_policy

    return build_sft_policy(progress=False)

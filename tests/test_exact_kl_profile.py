"""benchmarks/exact_kl_profile.py's op grouping: a matmul with the vocabulary in an input shape is the head's."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from exact_kl_profile import category  # noqa: E402


def test_ops_are_grouped_by_what_they_do():
    V = 49152
    assert category("aten::mm", [[512, 576], [576, V]], V) == "head matmul"
    assert category("aten::mm", [[512, 576], [576, 1536]], V) == "trunk matmul"
    assert category("aten::addmm", [[1536], [512, 576], [576, 1536]], V) == "trunk matmul"
    assert category("aten::_scaled_dot_product_flash_attention_for_cpu", [], V) == "attention"
    assert category("aten::_log_softmax", [[512, V]], V) == "softmax family (exp, log, max)"
    assert category("aten::mul_", [[512, V]], V) == "elementwise, copies, reductions"
    assert category("aten::nonzero", [[512]], V) == "other"

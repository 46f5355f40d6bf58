"""README's Python blocks are executed or checked (issue 27 item 2).

A block whose first line is a comment naming an example (``# examples/<name>.py``) is lines of that script, which
tests/test_examples.py runs: its code (comments dropped, whitespace ignored, ``...`` marking an elision) must occur
in the script line by line, in the block's order (lines may be skipped), so a renamed argument or function in
either breaks the test. Every other block is a complete program and runs here in a child process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
POINTER = re.compile(r"^# (examples/[\w./-]+\.py)\b")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``[(line number, code)]`` of every fenced ```python block of ``text``."""
    return [(text[: m.start()].count("\n") + 2, m[1]) for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)]


def _strip_comment(line: str) -> str:
    """``line`` without its ``#`` comment (a ``#`` inside a string literal is kept)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote and line[i - 1] != "\\":
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return line[:i]
    return line


def code_fragments(code: str) -> list[str]:
    """Each line of ``code`` without its comment and whitespace, cut at each ``...`` (an elision); empty ones
    dropped. A line's code must be contiguous in the script; lines may be skipped between two of them."""
    flat = [re.sub(r"\s+", "", _strip_comment(line)) for line in code.splitlines()]
    return [f for line in flat for f in line.split("...") if f]


def missing_fragments(block: str, script: str) -> list[str]:
    """The fragments of ``block`` that do not occur in ``script``, in order (each after the previous one)."""
    body = "".join(re.sub(r"\s+", "", _strip_comment(line)) for line in script.splitlines())
    position, missing = 0, []
    for fragment in code_fragments(block):
        found = body.find(fragment, position)
        if found < 0:
            missing.append(fragment)
        else:
            position = found + len(fragment)
    return missing


BLOCKS = python_blocks((ROOT / "README.md").read_text())


def test_fragment_matching():
    script = 'x = f(a,\n      b)  # a comment\ny = "#not a comment"\nz = g(c)\n'
    assert missing_fragments("x = f(a, b)\n...\nz = g(c)", script) == []
    assert missing_fragments('y = "#not a comment"  # note', script) == []
    assert missing_fragments("x = f(a, c)", script) == ["x=f(a,c)"]
    assert missing_fragments("x = f(a, b)\nz = g(c)", script) == []  # a line skipped in between
    assert missing_fragments("z = g(c)\nx = f(a, b)", script) == ["x=f(a,b)"]  # order matters
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("line,block", BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_python_block(line, block, tmp_path):
    pointer = POINTER.match(block)
    if pointer:
        script = ROOT / pointer[1]
        assert script.is_file(), f"README.md:{line} points to {pointer[1]}, which does not exist"
        missing = missing_fragments(block, script.read_text())
        assert missing == [], f"README.md:{line}: these lines are not in {pointer[1]} (in this order): {missing}"
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, f"README.md:{line} is not a complete program that runs:\n{proc.stderr[-4000:]}"

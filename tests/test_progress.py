"""trl_extras.utils.progress: bars on a terminal, silence plus one line per step of work in a log file."""

import io
import sys

import pytest

from trl_extras.utils import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_show_bars_follows_stderr_and_the_override(monkeypatch):
    monkeypatch.delenv("TRL_EXTRAS_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress.show_bars() and progress.disable_tqdm_default()
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert progress.show_bars() and not progress.disable_tqdm_default()
    monkeypatch.setenv("TRL_EXTRAS_PROGRESS", "lines")
    assert not progress.show_bars()
    monkeypatch.setenv("TRL_EXTRAS_PROGRESS", "bars")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress.show_bars()
    monkeypatch.setenv("TRL_EXTRAS_PROGRESS", "sometimes")
    with pytest.raises(ValueError, match="TRL_EXTRAS_PROGRESS"):
        progress.show_bars()


def test_progress_bar_draws_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("TRL_EXTRAS_PROGRESS", raising=False)
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    bar = progress.progress_bar(range(5), desc="work")
    assert list(bar) == [0, 1, 2, 3, 4] and len(bar) == 5
    bar.set_postfix(loss="1.0")
    bar.update()
    bar.close()
    assert log.getvalue() == ""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(progress.progress_bar(range(3), desc="work")) == [0, 1, 2]
    assert "work" in terminal.getvalue() and "\r" in terminal.getvalue()
    terminal.truncate(0)
    assert list(progress.progress_bar(range(3), desc="work", enabled=False)) == [0, 1, 2]
    assert terminal.getvalue() == ""


def test_log_line_one_line_main_process_only(monkeypatch, capsys):
    monkeypatch.delenv("TRL_EXTRAS_PROGRESS", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    progress.log_line("pipeline", "stage ppo: done in 3 s")
    assert capsys.readouterr().out == "[pipeline] stage ppo: done in 3 s\n"
    monkeypatch.setenv("RANK", "1")
    progress.log_line("pipeline", "stage ppo: done in 3 s")
    assert capsys.readouterr().out == ""


def test_cli_parsing_defaults_disable_tqdm_without_a_terminal(monkeypatch):
    from trl import SFTConfig

    from trl_extras.scripts.utils import parse_args

    monkeypatch.delenv("TRL_EXTRAS_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    base = ["--output_dir", "unused", "--use_cpu", "true", "--bf16", "false"]
    assert parse_args([SFTConfig], base, "x")[0].disable_tqdm is True  # HF's PrinterCallback lines, no bar frames
    assert parse_args([SFTConfig], [*base, "--disable_tqdm", "false"], "x")[0].disable_tqdm is False  # a flag wins
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert parse_args([SFTConfig], base, "x")[0].disable_tqdm is False  # bars on a terminal

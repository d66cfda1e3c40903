"""The CLI's output to a file or pipe is not cut to 80 columns."""

from __future__ import annotations

from rich.table import Table

from scheduler.cli.consoles import FILE_WIDTH, make_console


def test_a_table_sent_to_a_file_keeps_its_names(capsys, monkeypatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    console = make_console()
    assert console.width == FILE_WIDTH
    table = Table()
    for col in ("policy", "JCT mean live/sim", "err", "p99 live/sim", "err", "makespan err",
                "throughput err"):
        table.add_column(col, no_wrap=True)
    table.add_row("adaptive", "751.3 ms / 826.8 ms", "10.0%", "10.19 s / 11.25 s", "10.4%",
                  "0.0%", "0.0%")
    console.print(table)
    out = capsys.readouterr().out
    assert "adaptive" in out and "throughput err" in out and "…" not in out


def test_columns_still_wins(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    assert make_console().width == 100

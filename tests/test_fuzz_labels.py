"""Fuzz: any label a trace can carry (tenant, job id, device, policy name, reason) is drawn
and written as its characters, never parsed as mathtext, Markdown or HTML.

Issue 20 (point 11): a tenant ``$\\undefinedcmd{x}$`` made the plot step raise after the
run (exit 1, no summary, no report), and report.md passed HTML and links through.
The plotting and report functions are called directly on small synthetic outputs,
so each example costs a figure, not a run.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.report import _md_table, md_text, plot_jct_cdf, plot_shares, plot_text
from scheduler.report_plots import Batches, plot_gantt, plot_slo
from tests.malformed import FUZZ, examples

MARKUP = "$\\{}^_<>|[]()\n*`#!&~"
labels = st.text(alphabet=st.sampled_from(MARKUP) | st.sampled_from("ax0 é"), min_size=1,
                 max_size=24)
PNG = b"\x89PNG\r\n\x1a\n"


def _unescape_markdown(text: str) -> str:
    """What a CommonMark renderer shows for md_text's output: entities, then backslashes."""
    return re.sub(r"\\(.)", r"\1", html.unescape(text))


@settings(FUZZ, max_examples=examples(200))
@given(label=labels)
def test_markdown_cells_show_the_label_and_nothing_else(label: str) -> None:
    cell = md_text(label)
    assert "<" not in cell and ">" not in cell and "\n" not in cell
    assert "](" not in cell and not re.search(r"(?<!\\)\|", cell)
    assert _unescape_markdown(cell) == " ".join(label.splitlines())
    _, _, row = _md_table(["tenant", "jobs"], [[label, "1"]])
    assert row.count(" | ") == 1  # still two cells


@settings(FUZZ, max_examples=examples(200))
@given(label=labels)
def test_plot_labels_reach_matplotlib_as_literal_text(label: str) -> None:
    from matplotlib.text import Text

    shown, math = Text(text=plot_text(label))._preprocess_math(plot_text(label))
    assert math is False
    assert shown == (" " + label if label.startswith("_") else label)


@settings(FUZZ, max_examples=examples(8))
@given(tenant=labels, device=labels, policy=labels)
def test_plots_with_markup_labels_render(tmp_path: Path, tenant: str, device: str,
                                         policy: str) -> None:
    """Titles, legends and tick labels from user data: each figure saves a PNG."""
    paths = [tmp_path / f"{name}.png" for name in ("cdf", "share", "gantt", "slo")]
    plot_jct_cdf({policy: np.array([0.5, 1.0, 2.0])}, paths[0], f"{policy}\nJCT CDF")
    edges = np.linspace(0.0, 4.0, 5)
    plot_shares(edges, {tenant: np.full(4, 0.5), "other": np.full(4, 0.5)}, paths[1], policy)
    batches = Batches(device=(device, "gpu1"), start=np.array([0.0, 1.0]),
                      end=np.array([2.0, 3.0]), size=np.array([2, 1]),
                      kind=(tenant, "decode"))
    plot_gantt(batches, (0.0, 3.0), paths[2], policy)
    jobs = pa.table({"tenant": [tenant, "b"], "status": ["done", "done"],
                     "deadline": [5.0, 5.0], "jct": [1.0, 9.0]})
    plot_slo({policy: jobs, "x": jobs}, paths[3])
    for path in paths:
        assert path.read_bytes()[:8] == PNG, path

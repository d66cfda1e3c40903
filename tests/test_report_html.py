"""``attnsched report``: the HTML page and Markdown built from real simulated runs.

The page is opened in headless Chromium (CI installs /usr/bin/chromium): it must
load offline, decode every embedded plot, draw its interactive figures (a hover
on the CDF names a job of the run) and log no console error.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pyarrow as pa
import pytest

from scheduler.report_html import load_runs, parse_window, run_dirs
from scheduler.report_plots import batches, default_window, slo_by_tenant

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHARED_PLOTS = 3  # report.md: JCT CDF, slowdown by size, SLO attainment
PLOTS_PER_RUN = 3  # report.md: device timeline, tenant shares, Gantt
# The page draws the CDF, the utilization and each Gantt interactively; the rest as PNGs.
SHARED_IMAGES, IMAGES_PER_RUN = 2, 2
FIGURES = ("jct_cdf_1", "utilization_1", "gantt_1", "gantt_2")
JOB_IDS = {f"j{i}" for i in range(150)}  # the fixture's trace


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """``compare``'s layout: one folder per policy under one parent, written by ``simulate``."""
    from scheduler.cli.main import main
    from scheduler.presets import get_preset
    from scheduler.traces import write_trace
    from scheduler.traces.synth import SynthSpec, generate

    root = tmp_path_factory.mktemp("runs")
    trace = root / "trace.jsonl"
    write_trace(generate(SynthSpec(jobs=150, seed=2, rate=30.0), get_preset("tiny")), trace)
    for policy in ("static", "adaptive"):
        code = main(["simulate", str(trace), "--policy", policy, "--nodes", "gpu_h100=1",
                     "--out", str(root / "cmp" / policy)])
        assert code == 0
    return root / "cmp"


@pytest.fixture(scope="module")
def page(runs, tmp_path_factory) -> Path:
    from scheduler.cli.main import main

    out = tmp_path_factory.mktemp("report")
    assert main(["report", str(runs), "--out", str(out)]) == 0
    return out / "report.html"


def test_page_embeds_every_plot_and_links_nothing_outside(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert len(sources) == SHARED_IMAGES + 2 * IMAGES_PER_RUN
    for figure in FIGURES:
        assert f'id="{figure}"' in text, figure
    for src in sources:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix):]).startswith(PNG_SIGNATURE)
    # Nothing is fetched: no element loads from the network (Plotly's bundle names URLs in
    # its code, for features the page never uses; the Chromium test watches requests).
    body = text.split("</head>", 1)[1]
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", body)
    assert "<h2>static</h2>" in text and "<h2>adaptive</h2>" in text


def test_markdown_summary_compares_the_runs_and_links_existing_plots(page: Path) -> None:
    md = (page.parent / "report.md").read_text(encoding="utf-8")
    assert "| static |" in md and "| adaptive |" in md
    assert "## SLO attainment per tenant" in md  # generated traces give 30% of jobs deadlines
    links = re.findall(r"\]\((plots/[^)]+\.png)\)", md)
    assert len(links) == SHARED_PLOTS + 2 * PLOTS_PER_RUN
    for link in links:
        assert (page.parent / link).read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed (CI installs "
                                                   "it: apt-get install chromium)")
def test_page_loads_in_headless_chromium_with_every_plot_decoded(page: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page()
            errors: list[str] = []
            requests: list[str] = []
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.on("request", lambda r: requests.append(r.url))
            response = tab.goto(page.as_uri(), wait_until="load")
            assert response is not None and response.ok
            images = tab.evaluate("Array.from(document.images).map(i => "
                                  "({ok: i.complete, w: i.naturalWidth, h: i.naturalHeight}))")
            title = tab.title()
            drawn = [tab.evaluate(f"!!document.querySelector('#{f} .main-svg')")
                     for f in FIGURES]
            tab.evaluate("Plotly.Fx.hover('jct_cdf_1', [{curveNumber: 0, pointNumber: 3}])")
            hover = tab.evaluate("document.querySelector('#jct_cdf_1 .hoverlayer').textContent")
        finally:
            browser.close()
    assert len(images) == SHARED_IMAGES + 2 * IMAGES_PER_RUN
    assert all(i["ok"] and i["w"] > 0 and i["h"] > 0 for i in images), images
    assert all(drawn), dict(zip(FIGURES, drawn, strict=True))
    # The hover names one of the run's jobs, where it ran and the reason it was placed.
    job = re.match(r"\w+?(j\d+) \(", hover)
    assert job and job.group(1) in JOB_IDS, hover
    assert "ran on gpu_h100-0/gpu" in hover and ("place:" in hover or "offload:" in hover)
    assert errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert title == "attnsched report: adaptive, static"


def test_same_runs_give_the_same_page(runs: Path, page: Path, tmp_path: Path) -> None:
    from scheduler.report_html import write_html_report

    again, _ = write_html_report([runs], tmp_path)
    assert again.read_bytes() == page.read_bytes()


def test_window_option_sets_the_gantt_window(runs: Path, cli, tmp_path: Path) -> None:
    code, _, err = cli("report", runs / "adaptive", "--window", "1:2.5", "--out", tmp_path)
    assert code == 0, err
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "Batches per device, 1–2.5 s" in md
    assert md.count("![") == SHARED_PLOTS + PLOTS_PER_RUN


def test_utilization_is_not_ranked_and_the_legend_says_what_best_means(page: Path) -> None:
    md = (page.parent / "report.md").read_text(encoding="utf-8")
    header = next(line for line in md.splitlines() if line.startswith("| run | JCT mean"))
    util = header.split(" | ").index("device util")
    for line in md.splitlines():
        if line.startswith(("| static |", "| adaptive |")):
            assert "**" not in line.split(" | ")[util], line
    assert "device utilization is not ranked" in md


def test_runs_of_different_traces_are_compared_only_within_their_trace(
        runs: Path, cli, tmp_path: Path) -> None:
    other = tmp_path / "other.jsonl"
    assert cli("trace", "generate", "-o", other, "--jobs", "60", "--seed", "9")[0] == 0
    code, _, err = cli("simulate", other, "--policy", "greedy", "--out", tmp_path / "greedy")
    assert code == 0, err
    code, _, err = cli("report", runs, tmp_path / "greedy", "--out", tmp_path / "rep")
    assert code == 0, err
    assert "2 different workloads" in err
    md = (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    sections = [text.split("## Plots per run")[0] for text in md.split("## Trace ")[1:]]
    assert len(sections) == 2
    first, second = sorted(sections, key=lambda text: "| greedy |" in text)
    assert "| static |" in first and "| greedy |" not in first
    assert "| greedy |" in second and "| static |" not in second
    assert "**" not in second.split("\n\n")[1]  # a run alone has no "best" to mark
    page = (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
    assert 'id="jct_cdf_1"' in page and 'id="jct_cdf_2"' in page


def test_a_single_tenant_run_has_no_tenant_share_plot(cli, tmp_path: Path) -> None:
    trace = tmp_path / "one.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "40", "--tenants", "1")[0] == 0
    assert cli("simulate", trace, "--out", tmp_path / "r")[0] == 0
    assert cli("report", tmp_path / "r", "--out", tmp_path / "rep")[0] == 0
    md = (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    assert "Tenant shares" not in md and md.count("![") == SHARED_PLOTS + PLOTS_PER_RUN - 1


@pytest.mark.parametrize(("make", "expected"), [
    (lambda root: root / "nope", "no such directory"),
    (lambda root: root, "not a run directory"),
    (lambda root: _file(root / "f.txt"), "not a directory"),
    (lambda root: _partial(root / "half"), "missing jobs.parquet"),
])
def test_bad_run_dir_is_one_line_and_exit_2(cli, tmp_path: Path, make, expected) -> None:
    code, _, err = cli("report", make(tmp_path), "--out", tmp_path / "rep")
    assert code == 2
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "rep").exists()


def _file(path: Path) -> Path:
    path.write_text("x")
    return path


def _partial(path: Path) -> Path:
    path.mkdir()
    (path / "summary.json").write_text('{"policy": "x", "mode": "sim"}')
    return path


@pytest.mark.parametrize("text", ["5", "2:1", "a:b", "1:inf", ":3"])
def test_bad_window_is_input_error(cli, runs: Path, tmp_path: Path, text: str) -> None:
    code, _, err = cli("report", runs, "--window", text, "--out", tmp_path)
    assert code == 2 and "--window" in err
    with pytest.raises(ValueError, match="START:END"):
        parse_window(text)


def test_compare_folder_expands_and_labels_stay_unique(runs: Path) -> None:
    assert [p.name for p in run_dirs([runs])] == ["adaptive", "static"]
    labels = [r.label for r in load_runs([runs, runs / "static"])]
    assert len(set(labels)) == 3
    assert labels[0] == "adaptive" and labels[1].startswith("static (sim, ")


def _jobs(**columns: list) -> pa.Table:
    return pa.table(columns)


def test_batches_group_jobs_by_device_and_start() -> None:
    jobs = _jobs(device=["g0", "g0", "g1", "g0", None], start=[0.0, 0.0, 0.0, 1.0, None],
                 end=[0.5, 0.7, 0.2, 1.5, None],
                 kind=["decode", "prefill", "decode", "decode", "decode"])
    b = batches(jobs)
    assert b.device == ("g0", "g1", "g0")
    assert b.size.tolist() == [2, 1, 1]
    assert b.end.tolist() == [0.7, 0.2, 1.5]
    assert b.kind == ("mixed", "decode", "decode")


def test_default_window_holds_the_busiest_runs_first_batches() -> None:
    busy = batches(_jobs(device=["g0"] * 300, start=[float(i) for i in range(300)],
                         end=[i + 0.5 for i in range(300)], kind=["decode"] * 300))
    quiet = batches(_jobs(device=["g0"] * 3, start=[5.0, 400.0, 900.0],
                          end=[6.0, 401.0, 901.0], kind=["decode"] * 3))
    assert default_window([busy, quiet], count=200) == (0.0, 199.0)
    assert default_window([quiet], count=200) == (5.0, 901.0)  # fewer batches: all of them
    assert default_window([]) == (0.0, 1.0)


def test_slo_by_tenant_counts_deadlines_met() -> None:
    jobs = _jobs(tenant=["a", "a", "b", "b"], status=["done", "done", "failed", "done"],
                 jct=[1.0, 3.0, None, 0.5], deadline=[2.0, 2.0, 1.0, None])
    assert slo_by_tenant(jobs) == {"a": (2, 1), "b": (1, 0), "all": (3, 1)}
    no_deadlines = _jobs(tenant=["a"], status=["done"], jct=[1.0],
                         deadline=pa.array([None], pa.float64()))
    assert slo_by_tenant(no_deadlines) == {}


def test_one_trace_at_two_loads_is_two_workloads(cli, tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "60", "--seed", "2")[0] == 0
    for load in ("0.5", "0.9"):
        assert cli("simulate", trace, "--load", load, "--out", tmp_path / load)[0] == 0
    code, _, err = cli("report", tmp_path / "0.5", tmp_path / "0.9", "--out", tmp_path / "rep")
    assert code == 0 and "2 different workloads" in err
    md = (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    assert "at load 0.5" in md and "at load 0.9" in md

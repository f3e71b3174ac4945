"""report/index.html: written after each step beside findings.json, self-contained (no
network), with the verdict, checklist, three-way table and plots; a run that breaks in step 4
keeps steps 0–3 in both files; real Chromium loads it without console errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from markupsafe import escape
from typer.testing import CliRunner

import quantdoctor
import quantdoctor.api
from quantdoctor.cli import app
from quantdoctor.errors import QuantdoctorError
from quantdoctor.report import Finding, Report
from quantdoctor.report.html import render_html, write_html

from .conftest import digits_doctor, write_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

DOUBLE_NORMALIZATION = {
    # the host divides by 255 (digits_config's preprocess) and the recipe divides again
    "recipe": [
        {"normalization": {"mean": [0, 0, 0], "std": [255, 255, 255]}},
        {"calibration": {"method": "minmax", "size": 64}},
    ]
}


def _no_external_resources(html: str) -> None:
    # SVG namespace URIs are names, not fetches; anything loaded must be inline
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link" not in html and "<script" not in html and "@import" not in html


@pytest.fixture(scope="module")
def double_normalization_report(digits, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """diagnose, the whole checklist, on the digits MLP fed twice-normalized input."""
    folder = tmp_path_factory.mktemp("html_double")
    cfg = digits_doctor(digits, folder / "report", **DOUBLE_NORMALIZATION)
    path = write_config(folder, cfg)
    result = CliRunner().invoke(app, ["diagnose", str(path)])
    assert result.exit_code == 0, result.output
    assert "index.html" in result.output
    return folder / "report"


def test_diagnose_writes_a_self_contained_report(double_normalization_report: Path) -> None:
    html = (double_normalization_report / "index.html").read_text()
    data = json.loads((double_normalization_report / "findings.json").read_text())
    top = next(f for f in data["findings"] if f["severity"] in ("error", "warning"))
    assert top["id"] == "pipeline.normalization_duplicated"
    verdict = html[html.index('class="verdict') : html.index("<h2>Checklist")]
    assert top["id"] in verdict  # the verdict names the top suspect
    assert "Quantized results unreliable" in html
    for context in ("native", "fp_optimized", "quantized", "int8"):
        assert f"<td>{context}</td>" in html
    # plots: the three-way bars, the preprocessing hypotheses, the per-layer SNR bars
    assert html.count("<svg") >= 3
    assert "10 dB" in html  # the threshold line of the SNR plot
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))  # many inline SVGs, no clashing ids
    _no_external_resources(html)
    # every finding of findings.json is on the page, in the same order
    titles = [str(escape(f["title"])) for f in data["findings"]]
    positions = [html.find(t, html.index("<h2>Findings")) for t in titles]
    assert -1 not in positions and positions == sorted(positions)


def test_checklist_rows_follow_the_steps(double_normalization_report: Path) -> None:
    html = (double_normalization_report / "index.html").read_text()
    table = html[html.index("<h2>Checklist") : html.index("<h2>Three-way")]
    assert table.count("<tr>") == 6  # header + suspects 0..4
    assert '<span class="sev error">error</span>' in table
    assert "not run" not in table  # diagnose ran every step


def test_an_error_in_step_4_keeps_steps_0_to_3(digits_config, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise QuantdoctorError("layer analysis could not run: simulated failure")

    monkeypatch.setattr(quantdoctor.api, "layer_checks", broken)
    path = digits_config()
    folder = path.parent / "report"
    result = CliRunner().invoke(app, ["diagnose", str(path)])
    assert result.exit_code == 2
    assert "simulated failure" in result.output
    assert "steps finished so far are in" in result.output
    data = json.loads((folder / "findings.json").read_text())
    assert [data["steps"][s] for s in ("setup", "pipeline", "calibration", "evaluation")] == [
        "done"
    ] * 4
    assert data["steps"]["layers"].startswith("failed: layer analysis could not run")
    assert {"native", "quantized", "int8"} <= set(data["contexts"])
    html = (folder / "index.html").read_text()
    assert "simulated failure" in html
    assert '<span class="sev failed">failed</span>' in html
    assert "<td>int8</td>" in html  # the three-way results of step 3 are on the page


def test_a_crash_in_step_4_keeps_steps_0_to_3(digits_config, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def crash(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("bug")

    monkeypatch.setattr(quantdoctor.api, "layer_checks", crash)
    cfg = quantdoctor.load_config(digits_config())
    with pytest.raises(RuntimeError):
        quantdoctor.diagnose(cfg)
    data = json.loads((cfg.report.dir / "findings.json").read_text())
    assert data["steps"]["evaluation"] == "done"
    assert data["steps"]["layers"] == "failed: RuntimeError: bug"
    assert "RuntimeError: bug" in (cfg.report.dir / "index.html").read_text()


def test_html_renders_from_minimal_and_odd_content(tmp_path: Path) -> None:
    # a run that stopped in setup: no contexts, no evidence; and evidence that is not what
    # the plots expect must not cost the page
    report = Report(config="doctor.yaml", steps={"setup": "failed: no images"})
    html = render_html(report.to_dict())
    assert "No findings yet" in html and "not run" in html
    odd = Finding("layers.low_snr", 4, "warning", "<b>odd</b>", {"flagged": [{"layer": 3}]})
    data = Report(config="x", findings=[odd]).to_dict()
    data["evidence"] = {"layers": {"layers": [{"name": "a"}], "tensors": {"a": {}}}}
    path = write_html(data, tmp_path)
    page = path.read_text()
    assert "&lt;b&gt;odd&lt;/b&gt;" in page  # escaped, never raw HTML from evidence
    assert oct(path.stat().st_mode & 0o777) == "0o644"


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")
def test_report_in_headless_chromium(double_normalization_report: Path, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (dev extra) missing")
    problems: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto((double_normalization_report / "index.html").as_uri())
        page.wait_for_load_state("load")
        verdict = page.inner_text(".verdict")
        # every inline plot is laid out with a real size
        sizes = page.eval_on_selector_all(
            "svg", "els => els.map(e => [e.getBoundingClientRect().width, "
            "e.getBoundingClientRect().height])"
        )
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert problems == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert "pipeline.normalization_duplicated" in verdict
    assert len(sizes) >= 3 and all(w > 50 and h > 50 for w, h in sizes)
    assert shot.stat().st_size > 50_000


def test_progress_without_a_terminal_is_plain_lines_for_long_tasks_only() -> None:
    import io
    import time

    from rich.console import Console

    from quantdoctor.report.console import PlainProgress

    buf = io.StringIO()
    progress = PlainProgress(Console(file=buf, width=200), first=0.05, every=0.05)
    with progress.task("short", 3) as advance:
        advance(3)
    assert buf.getvalue() == ""
    with progress.task("decoding images", 4) as advance:
        for _ in range(4):
            time.sleep(0.06)
            advance(1)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("decoding images: ") and "%" in lines[0]
    assert lines[-1].startswith("decoding images: done (4/4)")
    assert 2 <= len(lines) <= 5


# --- per-layer charts of big models (YOLOX-Nano has 349 layers) ---------------------------

FAR_APART = (3, 170, 340)


def _layers(n: int, flagged: tuple[int, ...] = FAR_APART) -> list[dict[str, object]]:
    """Synthetic layer rows: SNRs 30..69 dB; flagged ones at 8, 9 dB and one IQR outlier at
    45 dB (above the threshold and above many unflagged layers: shown only because flagged)."""
    rows: list[dict[str, object]] = []
    for i in range(n):
        snr = {0: 8.0, 1: 45.0, 2: 9.0}[flagged.index(i)] if i in flagged else 30.0 + (i * 37) % 40
        rows.append(
            {
                "name": f"/model/backbone/stage{i // 50}/block{i}/conv/Conv",
                "op_type": "Conv",
                "alone_snr_min_db": snr,
                "accumulated_snr_db": snr - 2,
                "weight_snr_db": {"per_tensor": 40.0 - i % 23, "per_channel": 45.0},
            }
        )
    return rows


def _svg_texts(svg: str) -> list[str]:
    return re.findall(r"<text\b[^>]*>([^<]*)</text>", svg)


def test_snr_chart_of_a_big_model_labels_every_flagged_layer() -> None:
    from quantdoctor.report import plots

    layers = _layers(349)
    flagged = [str(layers[i]["name"]) for i in FAR_APART]
    texts = _svg_texts(plots.snr_bars(layers, 10.0, flagged))
    names = {plots._short(str(r["name"])): r for r in layers}
    labels = [t for t in texts if t in names]
    assert len(labels) == len(set(labels)) == plots.MAX_BARS  # one label per bar, all shown
    for name in flagged:
        assert plots._short(name) in labels
    assert labels[0] == plots._short(flagged[0])  # worst first
    # the rest are the lowest unflagged SNRs: the 45 dB outlier did not push out a 30 dB layer
    shown = [names[t]["alone_snr_min_db"] for t in labels if names[t]["name"] not in flagged]
    assert max(shown) <= min(  # type: ignore[type-var]
        r["alone_snr_min_db"] for t, r in names.items() if t not in labels
    )
    assert any(t.startswith(f"{plots.MAX_BARS} of 349 layers shown") for t in texts)
    # more flagged layers than bars: still MAX_BARS legible bars, and the note says so
    many = [str(r["name"]) for r in layers[::3]]
    assert f"the {plots.MAX_BARS} worst of {len(many)} flagged" in plots.snr_note(
        layers, 10.0, many
    )


def test_snr_chart_of_a_small_model_draws_every_layer_in_graph_order() -> None:
    from quantdoctor.report import plots

    layers = _layers(40, flagged=(3,))
    texts = _svg_texts(plots.snr_bars(layers, 10.0, [str(layers[3]["name"])]))
    short = [plots._short(str(r["name"])) for r in layers]
    assert [t for t in texts if t in short] == short
    assert not any("layers shown" in t for t in texts)
    assert plots.snr_note(layers, 10.0, [str(layers[3]["name"])]) == ""


def test_weight_chart_of_a_big_model_labels_every_flagged_layer() -> None:
    from quantdoctor.report import plots

    layers = _layers(349)
    flagged = [str(layers[i]["name"]) for i in FAR_APART]  # small losses: only flagged
    texts = _svg_texts(plots.weight_snr_bars(layers, flagged))
    labels = {plots._short(str(r["name"])) for r in layers} & set(texts)
    assert len(labels) == plots.MAX_BARS
    assert {plots._short(n) for n in flagged} <= labels
    assert any(t.startswith(f"{plots.MAX_BARS} of 349 layers shown") for t in texts)


def test_page_of_a_big_model_keeps_every_layer_in_a_table() -> None:
    from quantdoctor.report import plots

    layers = _layers(349)
    flagged = [{"layer": layers[i]["name"], "alone_snr_db": layers[i]["alone_snr_min_db"]}
               for i in FAR_APART]
    finding = Finding("layers.low_snr", 4, "warning", "3 layer(s) …", {"flagged": flagged})
    data = Report(config="x", findings=[finding]).to_dict()
    data["evidence"] = {"layers": {"layers": layers}}
    html = render_html(data)
    assert f"Chart: {plots.MAX_BARS} of 349 layers shown" in html
    assert 'href="#layer-table"' in html
    table = html[html.index('<details id="layer-table"') : html.index("<h2>Steps")]
    assert "All 349 layers (3 flagged" in table
    assert re.findall(r"<code>([^<]+)</code>", table) == [r["name"] for r in layers]
    assert table.count('<tr class="flag">') == 3

"""The inspector in a real browser: headless Debian chromium driven by Playwright.

1. The widget's JS alone, fed with model states from Python: states, errors, controls,
   names shown as text.
2. JupyterLab runs ``notebooks/inspector_live.ipynb`` (Run > Run All Cells, as a user
   would): a connection shows a non-zero buffer load while the job runs, then every
   instance shows finished; clicking an edge shows its details; names stay text.
3. The saved HTML report opens from ``file://`` with every other request blocked, and
   shows the graph.

Screenshots go to ``build/artifacts/``. Without chromium / Playwright / JupyterLab these
tests skip — except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from browser.lab import (
    CHROMIUM_ARGS,
    chromium_path,
    jupyter_lab,
    render_with_fake_model,
    run_all_cells,
    stack_problem,
    wait_all_cells_ran,
)
from test_inspector_fakes import HOSTILE, SCRIPT_END, decision, make_snapshot

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "build" / "artifacts"
NOTEBOOK = "inspector_live.ipynb"
LIVE = ".sage-inspector[data-pipeline='inspector-live']"

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def browser():
    problem = stack_problem()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser tests must run under CI=true, but {problem}")
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    pg = browser.new_page(viewport={"width": 1600, "height": 2000}, device_scale_factor=1)
    pg.problems = []                                             # uncaught errors and dialogs
    pg.on("pageerror", lambda e: pg.problems.append(f"pageerror: {e}"))
    pg.on("dialog", lambda d: (pg.problems.append(f"dialog: {d.message}"), d.dismiss()))
    yield pg
    pg.close()


def close_left_sidebar(page) -> None:
    """More room for the notebook: collapse Lab's file browser if it is open."""
    tab = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if tab.count():
        tab.first.click()


def shoot(widget, name: str) -> None:
    """A screenshot of the widget, its cell scrolled to the top of the notebook panel."""
    widget.evaluate("e => (e.closest('.jp-Cell') || e).scrollIntoView({block: 'start'})")
    widget.screenshot(path=str(ARTIFACTS / name))


def test_live_inspector_in_jupyterlab(page):
    with tempfile.TemporaryDirectory(prefix="sage-lab-") as work, \
            jupyter_lab(ROOT / "notebooks", Path(work)) as lab:
        page.goto(lab.url(NOTEBOOK), wait_until="domcontentloaded", timeout=60_000)
        run_all_cells(page, lab, NOTEBOOK)
        close_left_sidebar(page)

        # while the job runs, some connection's queue is not empty
        page.wait_for_function(
            """(root) => {
                 const w = document.querySelector(root);
                 const status = w && w.querySelector('.sage-status');
                 return status && status.textContent === 'RUNNING' &&
                        [...w.querySelectorAll('.sage-edge[data-pct]')].some(e => Number(e.dataset.pct) > 0);
               }""", arg=LIVE, timeout=60_000)
        widget = page.locator(LIVE)
        shoot(widget, "inspector-running.png")
        assert widget.locator(".sage-load").first.text_content().endswith("%")

        # then every instance finishes
        page.wait_for_function(
            """(root) => {
                 const nodes = [...document.querySelectorAll(root + ' .sage-node')];
                 return nodes.length === 7 && nodes.every(n => n.dataset.state === 'finished');
               }""", arg=LIVE, timeout=60_000)
        assert widget.locator(".sage-status").inner_text() == "FINISHED"
        assert widget.locator(".sage-log tbody tr").count() > 0
        assert wait_all_cells_ran(page) is None

        # clicking an edge shows its details (and selects it)
        widget.locator(".sage-edge-label[data-edge='split[0]->count[1]']").click()
        details = widget.locator(".sage-details")
        details.locator(".sage-details-title", has_text="split[0] → count[1]").wait_for(timeout=10_000)
        assert "packets sent" in details.inner_text()
        widget.locator(".sage-edge-label.sage-selected[data-edge='split[0]->count[1]']").wait_for(timeout=10_000)

        # a routing log row highlights its packet's path (a round trip through the kernel)
        widget.locator(".sage-log tbody tr").first.click()
        widget.locator(".sage-edge.sage-on-path").first.wait_for(timeout=10_000)

        # hostile names are shown as text, never run as markup
        odd = page.locator(".sage-inspector[data-pipeline='odd-names']")
        odd.locator(".sage-node-name", has_text="<img src=x").wait_for(timeout=10_000)
        assert f"{HOSTILE}[0]" in odd.locator(".sage-node").evaluate_all("ns => ns.map(n => n.dataset.node)")
        assert page.locator("img[src='x']").count() == 0
        shoot(odd, "inspector-names.png")
        shoot(widget, "inspector.png")
    assert page.problems == []


def test_saved_report_opens_offline(page, tmp_path):
    from sage_nb.demo import demo_pipeline
    from sage_nb.inspector import Inspector

    job = demo_pipeline("report-offline").run()
    job.wait(timeout=30)
    w = Inspector(job, view="physical")
    report = w.save_html(ARTIFACTS / "inspector-report.html")
    w.close()
    odd = Inspector(make_snapshot(ops=((HOSTILE, "source", 1), (SCRIPT_END, "sink", 1)),
                                  edges=((HOSTILE, SCRIPT_END, "round_robin", None, 0),)))
    odd_report = odd.save_html(tmp_path / "odd.html")
    odd.close()

    outside: list[str] = []

    def offline(route):
        if route.request.url.startswith("file:"):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    page.route("**/*", offline)
    page.goto(report.as_uri(), wait_until="load")
    assert page.locator("svg.sage-graph .sage-node").count() == 10
    assert page.locator("svg.sage-graph .sage-edge").count() == 17
    assert page.locator(".sage-status").inner_text() == "FINISHED"
    assert page.locator(".sage-timeline img").evaluate("img => img.naturalWidth") > 0
    page.screenshot(path=str(ARTIFACTS / "inspector-report.png"), full_page=True)

    page.goto(odd_report.as_uri(), wait_until="load")
    names = page.locator(".sage-node").evaluate_all("ns => ns.map(n => n.dataset.node)")
    assert names == [f"{HOSTILE}[0]", f"{SCRIPT_END}[0]"]
    assert page.locator(".sage-node-name", has_text="<img src=x").count() == 1
    assert page.locator("img[src='x'], b").count() == 0
    assert outside == [] and page.problems == []


def test_widget_js_draws_states_controls_and_keeps_names_as_text(page):
    from sage_nb.inspector import Inspector
    from sage_nb.metrics import ErrorInfo

    err = ErrorInfo(SCRIPT_END, f"{SCRIPT_END}[1]", "ZeroDivisionError: division by zero", "0",
                    "Traceback (most recent call last):\n  File 'x.py', line 1\nZeroDivisionError: division by zero")
    snap = make_snapshot(ops=((HOSTILE, "source", 1), (SCRIPT_END, "map", 3), ("out", "sink", 1)),
                         edges=((HOSTILE, SCRIPT_END, "hash", "word", 0), (SCRIPT_END, "out", "round_robin", None, 0)),
                         status="FAILED", error=err, used={f"{SCRIPT_END}[0]": 70, f"{SCRIPT_END}[2]": 95},
                         states={f"{SCRIPT_END}[0]": "draining"}, stops={f"{SCRIPT_END}[0]": (0, 1)},
                         trace=[decision(3, f"{HOSTILE}[0]", SCRIPT_END, "hash", key="u42", chosen=(2,), size=3)])
    w = Inspector(snap, view="physical")
    state = w.get_state()
    w.close()
    render_with_fake_model(page, state["_esm"], state, state["_css"])
    root = page.locator(".sage-inspector")
    assert root.locator(".sage-status").inner_text() == "FAILED"
    assert root.locator(".sage-node[data-state='failed']").count() == 1
    assert "Traceback" in root.locator(".sage-error pre").inner_text()
    names = root.locator(".sage-node").evaluate_all("ns => ns.map(n => n.dataset.node)")
    assert names[:2] == [f"{HOSTILE}[0]", f"{SCRIPT_END}[0]"]
    assert root.locator(".sage-node-name", has_text="</script><b").count() == 3
    assert root.locator(".sage-group text", has_text="<img src=x onerr").count() == 1
    assert page.locator("img[src='x'], b").count() == 0
    levels = root.locator(".sage-edge").evaluate_all("es => es.map(e => e.dataset.level)")
    assert {"amber", "red", "green"} <= set(levels)
    # a click selects (model.selected), the details panel shows the node
    root.locator(f".sage-node[data-node={json.dumps(SCRIPT_END + '[2]')}]").click()
    assert page.evaluate("window.sageModel.get('selected')") == {"kind": "node", "id": f"{SCRIPT_END}[2]"}
    assert root.locator(".sage-details-title").inner_text() == f"{SCRIPT_END}[2]"
    assert root.locator(".sage-pause").is_disabled()                 # nothing to pause any more
    root.screenshot(path=str(ARTIFACTS / "inspector-failed.png"))
    # controls of a running job: pause message, view toggle, update rate, log row -> packet
    sent = {f"src[0]->count[{i}]": n for i, n in enumerate((40, 95, 60, 180))}
    running = Inspector(make_snapshot(trace=[decision(7, "src[0]", "count", "hash", key="a")], sent=sent,
                                      used={"count[1]": 72, "count[3]": 90}, states={"src[0]": "backpressured"},
                                      top_keys={"count[3]": (("'the'", 120), ("'a'", 40))}), view="logical")
    state = running.get_state()
    running.close()
    render_with_fake_model(page, state["_esm"], state, state["_css"])
    root = page.locator(".sage-inspector")
    root.screenshot(path=str(ARTIFACTS / "inspector-logical.png"))
    root.locator(".sage-pause").click()
    root.locator("button[data-view='physical']").click()
    root.locator(".sage-rate").select_option("2")
    root.locator(".sage-log tbody tr").first.click()
    model = page.evaluate("({sent: window.sageSent, view: window.sageModel.get('view'), "
                          "rate: window.sageModel.get('rate'), packet: window.sageModel.get('packet')})")
    assert model == {"sent": [{"type": "pause"}], "view": "physical", "rate": 2, "packet": 7}
    assert page.problems == []

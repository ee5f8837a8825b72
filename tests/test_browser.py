"""The inspector in a real browser: headless Debian chromium driven by Playwright.

1. The widget's JS alone, fed with model states from Python: states, errors, controls,
   names shown as text.
2. JupyterLab runs ``notebooks/inspector_live.ipynb`` (Run > Run All Cells, as a user
   would): a connection shows a non-zero buffer load while the job runs, then every
   instance shows finished; clicking an edge shows its details; names stay text.
3. The saved HTML report opens from ``file://`` with every other request blocked, and
   shows the graph.
4. Step mode: JupyterLab runs ``notebooks/step_player.ipynb``; clicking Step shows each
   event and its packets on the right edges, the quiz asks and reveals, a breakpoint is
   shown with its queue. The saved step player opens offline and steps, plays, scrubs and
   quizzes without Python.

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
STEP_NOTEBOOK = "step_player.ipynb"

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


def test_chained_edges_are_drawn_dashed_without_a_queue(page, tmp_path):
    import sage_nb as snb
    from sage_nb.inspector import Inspector

    p = snb.Pipeline("chained-report")
    p.from_iterable(range(100), name="src").map(abs, name="m").sink(name="out")
    job = p.run(chain=True).wait(timeout=30)
    w = Inspector(job)
    report = w.save_html(tmp_path / "chained.html")
    state = w.get_state()
    w.close()
    for show in (lambda: page.goto(report.as_uri(), wait_until="load"),   # the saved report
                 lambda: render_with_fake_model(page, state["_esm"], state, state["_css"])):  # the widget
        show()
        chained = page.locator("svg.sage-graph .sage-edge.sage-chained path.sage-line")
        assert chained.count() == 2
        assert chained.first.evaluate("p => getComputedStyle(p).strokeDasharray") not in ("", "none")
        labels = page.locator(".sage-edge-label .sage-load").all_text_contents()
        assert labels == ["no queue", "no queue"]
    assert page.problems == []


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
    # the physical view marks the instance whose queue is 95 % full while it works
    assert root.locator(".sage-node.sage-bottleneck").evaluate_all("ns => ns.map(n => n.dataset.node)") == \
        [f"{SCRIPT_END}[2]"]
    root.screenshot(path=str(ARTIFACTS / "inspector-failed.png"))
    # controls of a running job: pause message, view toggle, update rate, log row -> packet
    sent = {f"src[0]->count[{i}]": n for i, n in enumerate((40, 95, 60, 180))}
    running = Inspector(make_snapshot(trace=[decision(7, "src[0]", "count", "hash", key="a")], sent=sent,
                                      used={"count[1]": 72, "count[3]": 90}, states={"src[0]": "backpressured"},
                                      top_keys={"count[3]": (("'the'", 120), ("'a'", 40))},
                                      stall=f"nothing moved for 12 s: {HOSTILE}[0] waits"), view="logical")
    state = running.get_state()
    report = running.save_html(Path(tempfile.mkdtemp()) / "running.html")
    running.close()
    render_with_fake_model(page, state["_esm"], state, state["_css"])
    root = page.locator(".sage-inspector")
    root.screenshot(path=str(ARTIFACTS / "inspector-logical.png"))
    # count[3]'s queue is 90 % full while it works and src waits: the operator is marked, with its badge
    marked = root.locator(".sage-node.sage-bottleneck")
    assert marked.evaluate_all("ns => ns.map(n => n.dataset.node)") == ["count"]
    assert marked.locator(".sage-bottleneck-ring").count() == 1
    assert marked.locator("text.sage-bottleneck-text").text_content() == "bottleneck"
    assert "likely bottleneck" in root.locator(".sage-legend").inner_text()
    assert root.locator(".sage-notice").inner_text() == f"Stalled: nothing moved for 12 s: {HOSTILE}[0] waits"
    root.locator(".sage-pause").click()
    root.locator("button[data-view='physical']").click()
    root.locator(".sage-rate").select_option("2")
    root.locator(".sage-log tbody tr").first.click()
    model = page.evaluate("({sent: window.sageSent, view: window.sageModel.get('view'), "
                          "rate: window.sageModel.get('rate'), packet: window.sageModel.get('packet')})")
    assert model == {"sent": [{"type": "pause"}], "view": "physical", "rate": 2, "packet": 7}
    assert page.problems == []
    page.goto(report.as_uri(), wait_until="load")  # the saved report draws it too
    assert page.locator(".sage-node.sage-bottleneck").evaluate_all("ns => ns.map(n => n.dataset.node)") == \
        ["count"]
    assert "likely bottleneck" in page.locator(".sage-legend").inner_text()


def test_key_panel_asks_what_if_and_keeps_its_selector_while_it_updates(page):
    import sage_nb as snb
    from sage_nb.communication import partition
    from sage_nb.inspector import Inspector

    skewed = ["u42" if i % 5 else f"u{i % 8}" for i in range(2000)]
    p = snb.Pipeline("what-if-panel")
    p.from_iterable(skewed, name="events").key_by(str).map(str, name="count", parallelism=4).sink(name="out")
    job = p.run().wait(timeout=30)
    w = Inspector(job)
    w.what_if("count", 8)
    state = w.get_state()
    w.close()
    answer = state["whatif"]
    render_with_fake_model(page, state["_esm"], {**state, "whatif": {}}, state["_css"])
    panel = page.locator(".sage-keys-op[data-operator='count']")
    assert panel.locator(".sage-whatif-table").count() == 0
    pick = panel.locator("select.sage-whatif-n")
    pick.select_option("8")
    assert page.evaluate("window.sageSent") == [{"type": "what_if", "operator": "count", "parallelism": 8}]
    pick.evaluate("e => { e.dataset.mark = 'kept'; }")
    page.evaluate("a => window.sageModel.set('whatif', a)", answer)   # Python's answer
    page.evaluate("k => window.sageModel.set('keydist', k)", state["keydist"])  # and the next update
    assert pick.evaluate("e => e.dataset.mark") == "kept"               # the selector was not rebuilt
    rows = panel.locator(".sage-whatif-table tbody tr")
    assert rows.count() == 8
    hot = rows.nth(partition("u42", 8)).locator("td").all_text_contents()
    assert hot[0] == f"count[{partition('u42', 8)}]" and hot[3] == "'u42'" and int(hot[1]) >= 1600
    assert panel.locator(".sage-whatif-title").inner_text().startswith("count over 8: skew 6.40")
    panel.screenshot(path=str(ARTIFACTS / "inspector-what-if.png"))
    assert page.problems == []


# ----------------------------------------------------------------------------- step mode
def step_wordcount(name: str):
    """The pipeline of notebooks/step_player.ipynb: same input and policy, same events."""
    import sage_nb as snb

    def word(w):
        return w

    p = snb.Pipeline(name)
    words = p.from_iterable(["the quick brown fox", "the lazy dog", "a fox and a dog"], name="lines") \
        .flat_map(str.split, name="split", parallelism=2)
    words.key_by(word).map(str.upper, name="upper", parallelism=3).sink(name="out")
    return p


def in_widget(name: str) -> str:
    return f".sage-inspector[data-pipeline='{name}']"


def test_step_mode_in_jupyterlab(page):
    expected = step_wordcount("step-expected").run(backend="step").step(3)
    with tempfile.TemporaryDirectory(prefix="sage-lab-") as work, \
            jupyter_lab(ROOT / "notebooks", Path(work)) as lab:
        page.goto(lab.url(STEP_NOTEBOOK), wait_until="domcontentloaded", timeout=60_000)
        run_all_cells(page, lab, STEP_NOTEBOOK)
        assert wait_all_cells_ran(page) is None
        close_left_sidebar(page)

        widget = page.locator(in_widget("step-wordcount"))
        widget.locator(".sage-event[data-index='0']").wait_for(timeout=30_000)
        assert "Before the first step" in widget.locator(".sage-event").inner_text()
        assert widget.locator(".sage-node.sage-upcoming[data-node='lines[0]']").count() == 1
        for k, ev in enumerate(expected, 1):
            widget.locator(".sage-step").click()
            widget.locator(f".sage-event[data-index='{k}']").wait_for(timeout=15_000)
            assert widget.locator(".sage-event-text").inner_text() == str(ev)
            for target in ev.targets:     # a packet on the edge sender -> target of this event
                widget.locator(f".sage-packet[data-edge='{ev.instance}->{target}']").first.wait_for(timeout=5000)
            assert widget.locator(f".sage-node.sage-moved[data-node='{ev.instance}']").count() == 1
        assert widget.locator(".sage-position").inner_text() == "step 3 / 3+"
        assert widget.locator(".sage-routes li").first.inner_text().startswith("out: round-robin")
        page.wait_for_timeout(1000)                                  # the packets arrive
        shoot(widget, "step-mode.png")
        widget.locator(".sage-back").click()
        widget.locator(".sage-event[data-index='2']").wait_for(timeout=10_000)
        assert widget.locator(".sage-packet").count() == len(expected[1].targets)

        # predict, then reveal
        quiz = page.locator(in_widget("step-quiz"))
        quiz.locator(".sage-quiz[data-state='ask'] button[data-instance='split[0]']").click()
        quiz.locator(".sage-quiz-result[data-correct='true']").wait_for(timeout=10_000)
        quiz.locator(".sage-step").click()                            # the next step routes: a question
        quiz.locator(".sage-quiz[data-state='ask']").wait_for(timeout=10_000)
        assert quiz.locator(".sage-node.sage-candidate").count() == 3
        shoot(quiz, "step-quiz-ask.png")
        quiz.locator(".sage-quiz button[data-instance='upper[2]']").click()
        result = quiz.locator(".sage-quiz-result[data-correct='false']")
        result.wait_for(timeout=10_000)
        assert "upper[1] got it" in result.inner_text()
        assert "score 1 / 2" in quiz.locator(".sage-score").inner_text()
        page.wait_for_timeout(1000)
        shoot(quiz, "step-quiz.png")

        # a breakpoint: where, why, and the queue of that instance
        bp = page.locator(in_widget("step-breakpoint"))
        brk = bp.locator(".sage-break")
        brk.wait_for(timeout=10_000)
        assert "first packet into upper[1]" in brk.inner_text()
        assert bp.locator(".sage-node.sage-break-node[data-node='upper[1]']").count() == 1
        assert bp.locator(".sage-edge.sage-break-edge[data-edge='split[0]->upper[1]']").count() == 1
        assert brk.locator("tbody tr").count() == 3
        assert bp.locator(".sage-pause").inner_text() == "Resume"
        shoot(bp, "step-breakpoint.png")
        bp.locator(".sage-pause").click()                             # the header's Resume clears it
        brk.wait_for(state="hidden", timeout=10_000)
    assert page.problems == []


def test_step_player_opens_offline_and_steps(page):
    from sage_nb.inspector import Inspector

    job = step_wordcount("step-player").run(backend="step")
    job.run_to_end()
    events = job.recording().events
    w = Inspector(job, view="physical")
    player = w.save_html(ARTIFACTS / "step-player.html")
    w.close()

    outside: list[str] = []

    def offline(route):
        if route.request.url.startswith("file:"):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    page.route("**/*", offline)
    page.goto(player.as_uri(), wait_until="load")
    root = page.locator(".sage-inspector")
    event = root.locator(".sage-event")
    root.locator(".sage-event[data-index='0']").wait_for(timeout=10_000)
    assert root.locator(".sage-position").inner_text() == f"step 0 / {len(events)}"
    for k in range(1, 4):
        root.locator(".sage-step").click()
        root.locator(f".sage-event[data-index='{k}']").wait_for(timeout=5000)
        assert root.locator(".sage-event-text").inner_text() == str(events[k - 1])
    ev = events[2]
    root.locator(f".sage-packet[data-edge='{ev.instance}->{ev.targets[0]}']").wait_for(timeout=5000)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "step-player.png"), full_page=True)
    page.keyboard.press("ArrowLeft")                                  # back, from the keyboard
    root.locator(".sage-event[data-index='2']").wait_for(timeout=5000)
    root.locator(".sage-scrub").evaluate(
        "(el, n) => { el.value = String(n); el.dispatchEvent(new Event('change')); }", len(events))
    root.locator(f".sage-event[data-index='{len(events)}']").wait_for(timeout=5000)
    assert root.locator(".sage-status").inner_text() == "FINISHED" and root.locator(".sage-step").is_disabled()

    # Play from the start, Pause
    root.locator(".sage-scrub").evaluate("el => { el.value = '0'; el.dispatchEvent(new Event('change')); }")
    root.locator(".sage-play").click()
    page.wait_for_function("() => window.sagePlayer.get('stepper').position >= 3", timeout=10_000)
    root.locator(".sage-play").click()
    assert not page.evaluate("window.sagePlayer.get('playing')")

    # the quiz works offline too
    root.locator(".sage-scrub").evaluate("el => { el.value = '0'; el.dispatchEvent(new Event('change')); }")
    root.locator(".sage-quiz-toggle input").check()
    root.locator(".sage-quiz[data-state='ask'] button[data-instance='split[1]']").click()
    result = root.locator(".sage-quiz-result[data-correct='false']")
    result.wait_for(timeout=5000)
    assert "split[0] got it" in result.inner_text() and "score 0 / 1" in root.locator(".sage-score").inner_text()
    assert event.get_attribute("data-index") == "1"
    assert outside == [] and page.problems == []


def test_step_panels_keep_names_as_text(page):
    import sage_nb as snb
    from sage_nb.inspector import Inspector

    p = snb.Pipeline("odd-steps")
    p.from_iterable(["a b"], name=HOSTILE).flat_map(str.split, name=SCRIPT_END, parallelism=2) \
        .sink(name="out")
    job = p.run(backend="step")
    job.break_when(first_packet=f"{SCRIPT_END}[0]")
    w = Inspector(job, view="physical", quiz=True)
    w.answer(f"{SCRIPT_END}[1]")                                # a reveal, and a breakpoint hit
    state = w.get_state()
    w.close()
    render_with_fake_model(page, state["_esm"], state, state["_css"])
    root = page.locator(".sage-inspector")
    assert HOSTILE in root.locator(".sage-event-title").inner_text()
    assert f"{SCRIPT_END}[0]" in root.locator(".sage-break").inner_text()
    assert root.locator(".sage-quiz-result[data-correct='false']").count() == 1
    instances = root.locator(".sage-quiz button").evaluate_all("bs => bs.map(b => b.dataset.instance)")
    assert instances == [f"{SCRIPT_END}[0]", f"{SCRIPT_END}[1]"]
    packet = root.locator(".sage-packet").first
    assert packet.get_attribute("data-edge") == f"{HOSTILE}[0]->{SCRIPT_END}[0]"
    assert page.locator("img[src='x'], b").count() == 0 and page.problems == []

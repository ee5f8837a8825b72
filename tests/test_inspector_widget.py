"""The Inspector widget without a browser: feed snapshots, assert on ``get_state()``.

Outside a kernel ipywidgets gives each widget a dummy comm, so traits, observers and
messages behave as in a notebook; ``set_state`` / ``_handle_custom_msg`` play the browser.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from pathlib import Path

import pytest
from test_inspector_fakes import HOSTILE, SCRIPT_END, FakeJob, decision, make_snapshot

import sage_nb as snb
from sage_nb.communication import partition
from sage_nb.inspector import Inspector, widget
from sage_nb.metrics import ErrorInfo
from sage_nb.testing import wait_for

STATIC = Path(__file__).resolve().parents[1] / "sage_nb" / "inspector" / "static"


def inspector_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sage-inspector")]


@pytest.fixture
def close_all():
    made: list[Inspector] = []
    yield made.append
    for w in made:
        w.close()


def edge(state, edge_id):
    return next(e for e in state["graph"]["edges"] if e["id"] == edge_id)


def node(state, node_id):
    return next(n for n in state["graph"]["nodes"] if n["id"] == node_id)


# ----------------------------------------------------------------------------- state
def test_static_snapshot_state(close_all):
    snap = make_snapshot(used={"count[0]": 59, "count[1]": 60, "count[2]": 85, "count[3]": 86},
                         states={"count[1]": "draining", "out[0]": "idle"}, stops={"count[1]": (2, 3)},
                         trace=[decision(5, "src[0]", "count", "hash", key="u42", chosen=(2,))])
    w = Inspector(snap, view="physical")
    close_all(w)
    state = w.get_state()
    assert state["_model_module"] == "anywidget" and "render" in state["_esm"]
    assert [(edge(state, f"src[0]->count[{i}]")["pct"], edge(state, f"src[0]->count[{i}]")["level"])
            for i in range(4)] == [(59, "green"), (60, "green"), (85, "amber"), (86, "red")]
    assert node(state, "count[1]")["state"] == "draining"
    assert "stop signals 2/3" in node(state, "count[1]")["lines"]
    assert node(state, "out[0]")["state"] == "idle"
    assert state["rows"][0]["explain"].endswith("mod 4 = 2")
    assert state["status"] == "RUNNING" and not state["live"]      # a snapshot: nothing to follow
    assert state["timeline"].startswith("data:image/png;base64,")


def test_view_toggle_selection_and_packet_path(close_all):
    trace = [decision(9, "src[0]", "count", "hash", key="a", chosen=(1,)),
             decision(9, "count[1]", "out", "round_robin", size=1, rr=(0, 0))]
    w = Inspector(make_snapshot(trace=trace), view="logical")
    close_all(w)
    assert [n["id"] for n in w.graph["nodes"]] == ["src", "count", "out"]
    w.set_state({"view": "physical"})                 # what the browser's toggle sends
    assert len(w.graph["nodes"]) == 6 and w.graph["view"] == "physical"
    w.set_state({"packet": 9})                        # a click on a routing log row
    assert w.get_state()["path"] == ["src[0]->count[1]", "count[1]->out[0]"]
    w.set_state({"view": "logical"})
    assert w.path == ["src->count", "count->out"]
    w.set_state({"selected": {"kind": "edge", "id": "src->count"}})
    assert w.get_state("selected")["selected"]["id"] == "src->count"
    with pytest.raises(Exception, match="view must be one of"):
        w.view = "3d"


def test_key_distribution_and_skew_in_state(close_all):
    sent = {"src[0]->count[0]": 10, "src[0]->count[1]": 20, "src[0]->count[2]": 30, "src[0]->count[3]": 60}
    w = Inspector(make_snapshot(sent=sent, top_keys={"count[3]": (("'the'", 50),)}))
    close_all(w)
    (table,) = w.get_state()["keydist"]
    assert (table["operator"], table["skew_text"], table["skew_level"]) == ("count", "2.00", "red")
    assert table["instances"][3]["top_keys"] == [["'the'", 50]]


def test_error_shows_the_failing_instance_and_traceback(close_all):
    err = ErrorInfo("count", "count[2]", "ZeroDivisionError: division by zero", "'x'",
                    "Traceback (most recent call last):\n  ...\nZeroDivisionError: division by zero")
    w = Inspector(make_snapshot(status="FAILED", error=err), view="physical")
    close_all(w)
    state = w.get_state()
    assert state["status"] == "FAILED"
    assert node(state, "count[2]")["state"] == "failed"
    assert state["error"]["instance"] == "count[2]" and "Traceback" in state["error"]["traceback"]


def test_hostile_names_stay_data_in_state_and_are_escaped_in_html(close_all, tmp_path):
    snap = make_snapshot(ops=((HOSTILE, "source", 1), (SCRIPT_END, "map", 2), ("out", "sink", 1)),
                         edges=((HOSTILE, SCRIPT_END, "hash", "k", 0), (SCRIPT_END, "out", "round_robin", None, 0)))
    w = Inspector(snap, view="logical")
    close_all(w)
    assert [n["id"] for n in w.get_state()["graph"]["nodes"]][:2] == [HOSTILE, SCRIPT_END]
    for page in (w.to_html(), w._repr_mimebundle_()[0]["text/html"]):
        assert HOSTILE not in page and "<b>x</b>" not in page
        assert "&lt;img src=x onerror=alert(1)&gt;" in page
    html = w.to_html()
    assert html.count("</script>") == 1           # only the closing tag of the JSON data block
    js = (STATIC / "inspector.js").read_text()
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", js)


def test_a_template_like_name_is_shown_as_written_never_evaluated(close_all, tmp_path):
    snap = make_snapshot(ops=(("{{7*7}}", "source", 1), ("${7*7}", "map", 2), ("out", "sink", 1)),
                         edges=(("{{7*7}}", "${7*7}", "hash", "k", 0), ("${7*7}", "out", "round_robin", None, 0)))
    w = Inspector(snap, view="physical")
    close_all(w)
    html = w.save_html(tmp_path / "report.html").read_text(encoding="utf-8")
    assert "{{7*7}}[0]" in html and "${7*7}[1]" in html
    assert not re.search(r">\s*49(\[\d\])?\s*<", html)  # no template engine between a name and the page


# ----------------------------------------------------------------------------- static outputs
def test_save_html_is_self_contained_and_offline(close_all, tmp_path):
    w = Inspector(make_snapshot(used={"count[0]": 70}), view="physical")
    close_all(w)
    html = w.save_html(tmp_path / "report.html").read_text(encoding="utf-8")
    without_images = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert "http" not in without_images and "//" not in without_images.replace("<!--", "")
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=(?!\"data:)", html)
    assert '<svg class="sage-graph"' in html and 'data-edge="src[0]-&gt;count[0]"' in html
    assert ">70%<" in html and "Routing log" in html and "Key distribution" in html
    assert 'src="data:image/png;base64,' in html


def test_save_png_and_mimebundle(close_all, tmp_path):
    w = Inspector(make_snapshot())
    close_all(w)
    assert w.save_png(tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data, _meta = w._repr_mimebundle_()
    assert {"text/plain", "text/html", "image/png", "application/vnd.jupyter.widget-view+json"} <= set(data)
    assert data["text/plain"].startswith("Inspector(fakepipe): RUNNING")
    assert "src[0]->count[0]" in data["text/plain"]


def test_png_renderings_show_names_as_plain_text(close_all, tmp_path):
    odd = "cost $x_1$ a$b"            # matplotlib would parse $...$ as math, or fail on a lone $
    w = Inspector(make_snapshot(ops=((odd, "source", 1), ("out", "sink", 1)),
                                edges=((odd, "out", "round_robin", None, 0),), used={"out[0]": 50}))
    close_all(w)
    assert w.save_png(tmp_path / "odd.png").stat().st_size > 1000
    assert w.timeline.startswith("data:image/png;base64,")


# ----------------------------------------------------------------------------- the updater thread
@pytest.mark.parametrize("rate", [1, 10])
def test_updater_follows_the_job_and_stops_within_a_second_after_it_ends(close_all, rate):
    job = FakeJob()
    w = Inspector(job, rate=rate)
    close_all(w)
    assert w.live and len(inspector_threads()) == 1
    live_bundle = w._repr_mimebundle_()[0]
    assert "text/html" in live_bundle and "image/png" not in live_bundle    # no GIL-heavy PNG mid-run
    job.polled.clear()
    job.current = make_snapshot(used={"count[0]": 90}, elapsed=2.0)
    wait_for(lambda: w.graph and edge(w.get_state(), "src[0]->count[0]")["pct"] == 90, 2)
    ended = time.monotonic()
    job.finish()
    wait_for(lambda: not inspector_threads(), 1.0)
    assert time.monotonic() - ended < 1.0
    state = w.get_state()
    assert state["status"] == "FINISHED" and not state["live"]
    assert {n["state"] for n in state["graph"]["nodes"]} == {"finished"}


def test_a_real_job_failing_under_a_live_inspector_shows_failed_and_its_error(close_all):
    """T25 with a real job: it fails while the widget is live; the widget shows FAILED, the
    instance and the error with its traceback, and its thread ends."""
    def fail_at_50(x):
        if x == 50:
            raise ValueError("bad item 50")
        return x

    p = snb.Pipeline("t25-fails-live")
    p.from_source(itertools.count, name="src").map(fail_at_50, name="m").sink(lambda x: None, name="out")
    job = p.run(queue_maxsize=8)
    w = Inspector(job, rate=10)
    close_all(w)
    with pytest.raises(snb.JobFailed):
        job.wait(timeout=30)
    wait_for(lambda: not inspector_threads(), 2.0)
    state = w.get_state()
    assert state["status"] == "FAILED" and not state["live"]
    err = state["error"]
    assert (err["node"], err["instance"], err["message"]) == ("m", "m[0]", "ValueError: bad item 50")
    assert "fail_at_50" in err["traceback"] and err["packet"].endswith(" 50")
    assert [n["state"] for n in state["graph"]["nodes"] if n["id"] == "m[0]"] == ["failed"]


def test_the_inspector_only_reads_snapshots(close_all):
    """It never touches a queue or a task: only ``snapshot()`` (and identity, ``done``, the
    backend, and whether a breakpoint holds the job)."""
    touched: list[str] = []

    class Recording:
        def __init__(self, job):
            object.__setattr__(self, "_job", job)

        def __getattr__(self, name):
            touched.append(name)
            return getattr(self._job, name)

    job = FakeJob()
    w = Inspector(Recording(job), rate=10)
    close_all(w)
    wait_for(lambda: job.calls >= 3, 3)
    job.finish()
    wait_for(lambda: not w.live, 2)
    assert set(touched) <= {"snapshot", "job_id", "pipeline_name", "done", "backend", "breakpoint_hit"}
    assert "snapshot" in touched


def test_updater_rate_is_at_most_ten_per_second(close_all):
    job = FakeJob()
    w = Inspector(job, rate=50)
    close_all(w)
    assert w.rate == 10
    calls = job.calls
    start = time.monotonic()
    wait_for(lambda: job.calls >= calls + 5, 3)
    assert time.monotonic() - start >= 0.35        # 5 polls take at least 4 intervals of 0.1 s


def test_costly_updates_are_spaced_to_keep_the_inspector_under_its_cpu_budget(close_all):
    """An update that burns 10 ms of CPU is followed by >= 10 ms / DUTY (2 %) = 0.5 s of rest."""
    from sage_nb.inspector.updater import DUTY

    class Costly(FakeJob):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def snapshot(self):
            start = time.thread_time()
            while time.thread_time() - start < 0.010:     # 10 ms of this thread's CPU
                pass
            self.times.append(time.monotonic())
            return super().snapshot()

    job = Costly()
    w = Inspector(job, rate=10)
    close_all(w)
    wait_for(lambda: len(job.times) >= 4, 5)
    gaps = [b - a for a, b in zip(job.times[1:], job.times[2:], strict=False)]
    assert min(gaps) >= 0.010 / DUTY * 0.9, gaps


def test_close_stops_the_thread_within_a_second(close_all):
    job = FakeJob()
    w = Inspector(job, rate=1)
    close_all(w)
    wait_for(lambda: job.calls >= 1, 2)
    start = time.monotonic()
    w.close()
    assert not inspector_threads() and time.monotonic() - start < 1.0
    assert not w.live


def test_new_inspector_on_the_same_job_closes_the_old_one(close_all):
    baseline = threading.active_count()
    job = FakeJob()
    first = Inspector(job)
    close_all(first)
    assert threading.active_count() == baseline + 1
    second = Inspector(job)                           # re-running the cell
    close_all(second)
    assert first.comm is None and first._updater.alive is False
    assert threading.active_count() == baseline + 1
    second.close()
    assert threading.active_count() == baseline


def test_pause_and_resume_messages_reach_the_job(close_all):
    job = FakeJob()
    w = Inspector(job, rate=10)
    close_all(w)
    w._handle_custom_msg({"type": "pause"}, [])
    wait_for(lambda: w.status == "PAUSED", 2)
    w._handle_custom_msg({"type": "resume"}, [])
    wait_for(lambda: w.status == "RUNNING", 2)
    assert job.actions == ["pause", "resume"]
    job.finish()
    wait_for(lambda: not w.live, 2)
    w.pause()                                         # a finished job ignores pause
    assert job.actions == ["pause", "resume"]


def test_an_updater_error_is_shown_not_printed(close_all, capsys):
    class Broken(FakeJob):
        def snapshot(self):
            if self.calls:
                raise RuntimeError("snapshot exploded")
            return super().snapshot()

    w = Inspector(Broken())
    close_all(w)
    wait_for(lambda: not w.live, 2)
    assert "snapshot exploded" in w.notice
    assert capsys.readouterr().out == ""


def test_inspector_rejects_what_it_cannot_watch():
    with pytest.raises(TypeError, match="needs a job"):
        Inspector(42)


# ----------------------------------------------------------------------------- with the real runtime
def test_real_job_ends_complete_and_leaves_no_thread(no_leak, close_all):
    from sage_nb.demo import demo_pipeline

    job = demo_pipeline("insp-real").run()
    w = snb.Inspector(job, rate=10)
    close_all(w)
    job.wait(timeout=30)
    wait_for(lambda: not w.live, 2)
    state = w.get_state()
    assert state["status"] == "FINISHED"
    assert {n["state"] for n in state["graph"]["nodes"]} == {"finished"}
    assert state["summary"]["packets"] > 0 and state["rows"]
    assert state["keydist"][0]["operator"] == "count"
    w.close()


def test_pipeline_inspector_shows_the_plan_then_follows_its_job(no_leak, close_all):
    p = snb.Pipeline("insp-follow")
    p.from_iterable(range(200), name="nums").key_by(lambda x: x % 7).map(lambda x: x, name="id",
                                                                         parallelism=2).sink(name="out")
    w = snb.Inspector(p, rate=10)
    close_all(w)
    assert w.status == "CREATED" and w.summary["packets"] == 0
    job = p.run()
    job.wait(timeout=30)
    wait_for(lambda: w.status == "FINISHED" and w.summary["job_id"] == job.job_id, 3)
    assert w.summary["packets"] > 0
    w.close()


def test_what_if_is_asked_from_the_key_panel_and_shown_there(no_leak, close_all):
    skewed = ["u42" if i % 5 else f"u{i % 8}" for i in range(2000)]
    p = snb.Pipeline("insp-what-if")
    p.from_iterable(skewed, name="events").key_by(str).map(str, name="count", parallelism=4).sink(name="out")
    job = p.run().wait(timeout=30)
    w = snb.Inspector(job)
    close_all(w)
    assert w.whatif == {}
    w._handle_custom_msg({"type": "what_if", "operator": "count", "parallelism": 8}, [])  # the selector
    expected = job.what_if("count", 8)
    assert w.whatif["operator"] == "count" and w.whatif["parallelism"] == 8
    assert [i["packets"] for i in w.whatif["instances"]] == list(expected.packets)
    assert [i["name"] for i in w.whatif["instances"]] == [f"count[{i}]" for i in range(8)]
    assert w.whatif["instances"][partition("u42", 8)]["hottest"] == "'u42'"
    assert w.whatif["skew_text"] == f"{expected.skew:.2f}" and w.whatif["skew_level"] == "red"
    # bad input from the browser is a notice, and what was shown stays
    w._handle_custom_msg({"type": "what_if", "operator": "out", "parallelism": 2}, [])
    assert "'out' is not behind key_by" in w.notice and w.whatif["parallelism"] == 8
    w._handle_custom_msg({"type": "what_if", "operator": "count", "parallelism": 0}, [])
    assert "parallelism must be an int >= 1, got 0" in w.notice
    w._handle_custom_msg({"type": "what_if", "operator": "nope", "parallelism": 2}, [])
    assert "no operator named 'nope'" in w.notice
    with pytest.raises(ValueError, match="needs the job's key counts"):
        Inspector(job.snapshot()).what_if("count", 2)
    w.close()


def test_real_failure_is_shown_with_its_traceback(no_leak, close_all):
    p = snb.Pipeline("insp-fail")
    p.from_iterable([1, 2, 0, 4], name="nums").map(lambda x: 10 // x, name="div").sink(name="out")
    job = p.run()
    with pytest.raises(snb.JobFailed):
        job.wait(timeout=30)
    w = snb.Inspector(job, view="physical")
    close_all(w)
    assert w.status == "FAILED"
    assert node(w.get_state(), "div[0]")["state"] == "failed"
    assert "ZeroDivisionError" in w.error["message"] + w.error["traceback"]
    assert "Traceback" in w.error["traceback"]
    w.close()


class Busy(FakeJob):
    """A job whose routing trace moves on at every snapshot."""

    def snapshot(self):
        if not self.done:
            self.current = make_snapshot(trace=[decision(self.calls, "src[0]", "count", "hash", key="k")],
                                         elapsed=1.0 + self.calls)
        return super().snapshot()


def test_the_routing_log_follows_a_running_job_twice_a_second_and_the_end_at_once(close_all, monkeypatch):
    made: list[float] = []                  # the widget's clock at each remade log (ours would lag)
    real = Inspector._rows

    def rows(self, snap, now, at_once):
        before = self._rows_mark
        out = real(self, snap, now, at_once)
        if self._rows_mark != before:
            made.append(now)
        return out

    monkeypatch.setattr(Inspector, "_rows", rows)
    job = Busy()
    w = Inspector(job, rate=10)
    close_all(w)
    wait_for(lambda: job.calls >= 12, 5)
    assert len(made) >= 2 and all(b - a >= widget.ROWS_EVERY for a, b in itertools.pairwise(made)), made
    job.finish()                                              # the final state shows the last rows
    wait_for(lambda: not w.live, 2)
    assert w.rows[0]["seq"] == job.current.trace[-1].seq


def test_updater_cost_counts_the_updates_while_the_job_runs(close_all):
    job = FakeJob()
    w = Inspector(job, rate=10)
    close_all(w)
    wait_for(lambda: w.updater_cost[0] >= 3, 3)
    updates, cpu = w.updater_cost
    assert 0 < cpu < 1.0 and updates <= job.calls

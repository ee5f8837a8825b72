"""Step mode in the Inspector, without a browser: drive it like its buttons, assert on ``get_state()``.

A step job (``backend="step"``) or a recording is stepped through the widget's Python API
(``step``, ``back``, ``seek``, ``play`` / ``pause``, ``answer``) and through the messages
the browser sends; the synced traits must say which event is shown, which instance moved,
where its packets go, where the scrubber is, what the quiz asks and answers, and where a
breakpoint holds the job. The offline player is checked as data: its embedded recording,
its patches (replayed here as ``player.js`` replays them), and its escaping.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_inspector_fakes import HOSTILE, SCRIPT_END

import sage_nb as snb
from sage_nb.inspector import Inspector, controls, player
from sage_nb.testing import wait_for

LINES = ["the quick brown fox", "the lazy dog", "a fox and a dog"]


def word(w):
    return w


def wordcount(name: str, *, split: str = "split", upper: str = "upper") -> snb.Pipeline:
    """lines → split (2, round-robin) → hash(word) → upper (3) → out (as notebooks/step_player.ipynb)."""
    p = snb.Pipeline(name)
    words = p.from_iterable(LINES, name="lines").flat_map(str.split, name=split, parallelism=2)
    words.key_by(word).map(str.upper, name=upper, parallelism=3).sink(name="out")
    return p


@pytest.fixture
def close_all(no_leak):
    made: list[Inspector] = []
    yield made.append
    for w in made:
        w.close()


def watch(close_all, target, **kwargs) -> Inspector:
    w = Inspector(target, **kwargs)
    close_all(w)
    return w


def node_classes(state, node_id):
    return next(n for n in state["graph"]["nodes"] if n["id"] == node_id)


def apply_patch(old, p):
    """What player.js does with one patch (kept in step with it)."""
    if not isinstance(p, dict):
        return p
    if "$" in p:
        return p["$"]
    if "$l" in p:
        out = list(old)
        for i, q in p["$l"]:
            out[i] = apply_patch(old[i], q)
        return out
    if "$p" in p:
        return p["$p"] + old[: p["$n"]]
    out = dict(old)
    for k, q in p.get("$d", {}).items():
        out[k] = apply_patch(old.get(k), q)
    for k in p.get("$x", []):
        del out[k]
    return out


def player_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="sage-player-data">(.*?)</script>', html, re.S)
    assert m, "the player embeds its recording"
    return json.loads(m.group(1))


# ----------------------------------------------------------------------------- stepping
def test_step_back_and_seek_move_the_event_the_highlight_and_the_scrubber(close_all):
    job = wordcount("insp-step").run(backend="step")
    w = watch(close_all, job, view="physical")
    state = w.get_state()
    assert state["stepper"]["position"] == 0 and state["stepper"]["max"] == 0
    assert state["stepper"]["upcoming"] == "lines[0]" and state["event"] == {}
    assert state["timeline"] == "" and "step by step" in state["summary"]["meta"]

    first = w.step()
    assert str(first) == "#1 lines[0] packet #1 'the quick brown fox' → split[0]"
    state = w.get_state()
    assert (state["event"]["index"], state["event"]["node"], state["event"]["text"]) == (1, "lines[0]", str(first))
    assert state["event"]["moves"] == [{"edge": "lines[0]->split[0]", "target": "split[0]", "node": "split[0]",
                                        "label": "'the quick br…", "kind": "packet"}]
    assert state["event"]["routes"] == ["split: round-robin counter 0 → 1 → split[0]"]
    assert (state["stepper"]["position"], state["stepper"]["max"], state["stepper"]["upcoming"]) == (1, 1, "split[0]")

    second, third = w.step(), w.step()
    state = w.get_state()
    assert second.instance == "split[0]" and len(state["stepper"]) and state["stepper"]["position"] == 3
    assert state["event"]["instance"] == third.instance and third.targets == ("out[0]",)
    assert [m["edge"] for m in state["event"]["moves"]] == [f"{third.instance}->out[0]"]
    assert state["event"]["in_edge"] == f"split[0]->{third.instance}"

    assert w.back().index == 2                                  # back one: event 2, the end stays 3
    state = w.get_state()
    assert (state["stepper"]["position"], state["stepper"]["max"], state["event"]["index"]) == (2, 3, 2)
    assert [m["edge"] for m in state["event"]["moves"]] == [f"split[0]->{t}" for t in second.targets]
    assert job.position == 2                                    # the widget moves the job's own cursor
    assert w.seek(0) is None and w.get_state()["event"] == {}
    w.seek(99)                                                  # clamped to what is recorded
    assert w.stepper["position"] == 3 and w.event["index"] == 3
    w.view = "logical"                                          # ids follow the view
    assert w.event["node"] == "upper" and w.event["moves"][0]["edge"] == "upper->out"


def test_a_cell_that_steps_the_job_moves_the_widget_too(close_all):
    job = wordcount("insp-cell").run(backend="step")
    w = watch(close_all, job, view="physical", rate=10)
    assert w.live                                               # a light watch while the job can move
    job.step(4)
    wait_for(lambda: w.stepper.get("position") == 4, 3)
    assert w.event["index"] == 4


def test_browser_messages_mirror_the_buttons(close_all):
    job = wordcount("insp-msg").run(backend="step")
    w = watch(close_all, job, view="physical")
    for msg in ({"type": "step"}, {"type": "step"}, {"type": "step"}, {"type": "back"}):
        w._handle_custom_msg(msg, [])
    assert w.stepper["position"] == 2 and w.event["index"] == 2
    w._handle_custom_msg({"type": "seek", "position": 1}, [])
    assert w.stepper["position"] == 1 and w.event["index"] == 1
    w._handle_custom_msg({"type": "answer", "instance": "upper[0]"}, [])   # no question waiting
    assert "no quiz question is waiting" in w.notice
    w.set_state({"quiz": True})                                 # the browser's toggle: ask at once
    assert w.question["state"] == "ask" and w.question["instance"] == "split[0]"
    w._handle_custom_msg({"type": "answer", "instance": "upper[1]"}, [])
    assert w.question["correct"] is True and w.stepper["position"] == 2


def test_play_steps_from_the_updater_thread_and_pause_stops_it(close_all):
    job = wordcount("insp-play").run(backend="step")
    w = watch(close_all, job, view="physical", rate=10)
    w.play()
    assert w.playing
    wait_for(lambda: w.stepper.get("position", 0) >= 5, 5)
    w.pause()
    assert not w.playing
    stopped = w.stepper["position"]
    w.refresh()
    assert w.stepper["position"] in (stopped, stopped + 1)      # a step already under way may land
    w.play()                                                    # ... then plays to the end and stops
    wait_for(lambda: w.stepper.get("at_end"), 10)
    wait_for(lambda: not w.playing and not w.live, 3)           # the job ended: no thread left
    assert w.status == "FINISHED" and job.results("out")
    assert all(n["state"] == "finished" for n in w.graph["nodes"])


def test_a_recording_replays_read_only_without_a_thread(close_all, tmp_path):
    job = wordcount("insp-rec").run(backend="step")
    job.run_to_end()
    rec = snb.load_recording(job.save_recording(tmp_path / "run.json"))
    w = watch(close_all, rec, view="physical", rate=10)
    assert not w.live and w.stepper["readonly"] and w.stepper["max"] == len(rec)
    assert w.stepper["position"] == 0 and w.stepper["upcoming"] == "lines[0]"
    assert str(w.step()) == str(rec.events[0])
    w.seek(len(rec))
    assert w.stepper["at_end"] and w.step() is None and w.status == "FINISHED"
    w.seek(len(rec) - 3)
    w.play()
    wait_for(lambda: w.stepper["at_end"] and not w.playing, 5)
    wait_for(lambda: not w.live, 3)                             # Play's thread ends with the recording


def test_past_a_full_recording_only_the_present_can_be_shown(close_all):
    job = wordcount("insp-full").run(backend="step", record_limit=5)
    with pytest.warns(RuntimeWarning, match="keeps 5 events"):
        job.step(12)
    w = watch(close_all, job)
    assert w.stepper["truncated"] and w.stepper["position"] == w.stepper["max"] == 12
    w.back()                                                    # 11 is not recorded: the last recorded one
    assert (w.stepper["position"], w.stepper["max"], w.event["index"]) == (5, 12, 5)
    w.seek(8)
    assert w.stepper["position"] == 5
    w.seek(12)                                                  # the present
    assert w.stepper["position"] == 12 and w.event == {}


# ----------------------------------------------------------------------------- predict-then-reveal
def test_quiz_asks_before_each_routing_decision_then_reveals_and_scores(close_all):
    job = wordcount("insp-quiz").run(backend="step")
    w = watch(close_all, job, view="physical", quiz=True)
    q = w.get_state()["question"]
    assert q["state"] == "ask" and q["instance"] == "lines[0]" and q["step"] == 1
    assert [c["id"] for c in q["candidates"]] == ["split[0]", "split[1]"]
    assert q["rule"] == "lines → split: round-robin" and q["score"] == {"right": 0, "answered": 0}
    assert w.stepper["position"] == 0                           # asked, not stepped

    r = w.answer("split[0]")
    assert (r["state"], r["correct"], r["answer"], r["score"]) == ("revealed", True, ["split[0]"],
                                                                 {"right": 1, "answered": 1})
    assert r["verdict"] == "Right: split[0] got it." and r["routes"] == ["split: round-robin counter 0 → 1 → split[0]"]
    assert w.stepper["position"] == 1 and w.get_state()["question"]["state"] == "revealed"

    assert w.step() is None                                     # the next step routes: ask first
    q = w.question
    assert q["state"] == "ask" and q["instance"] == "split[0]" and "'the quick brown fox'" in q["prompt"]
    assert "first output" in q["prompt"] and q["rule"] == "split → upper: hash(word)"
    r = w.answer("upper[2]")
    assert r["correct"] is False and r["answer"] == ["upper[1]"] and r["score"] == {"right": 1, "answered": 2}
    assert r["verdict"] == "Not this time: upper[1] got it, not upper[2]."
    assert all("hash(" in line for line in r["routes"])

    # upper → out has one instance: nothing to predict, Step just steps
    ev = w.step()
    assert ev is not None and ev.instance.startswith("upper") and w.question == {"score": {"right": 1, "answered": 2}}

    with pytest.raises(ValueError, match="no quiz question is waiting"):
        w.answer("upper[0]")
    w.seek(0)                                                   # back to the start, then skip a question
    w.step()
    assert w.question["state"] == "ask"
    with pytest.raises(ValueError, match="not a candidate"):
        w.answer("out[0]")
    w.step()                                                    # Step while asked: skip it
    assert w.question["state"] == "revealed" and w.question["scored"] is False
    assert w.question["verdict"].startswith("Skipped") and w.question["score"]["answered"] == 2
    w.quiz = False
    assert w.question == {}


def test_quiz_candidates_of_a_broadcast_and_an_exhausted_source(close_all):
    p = snb.Pipeline("insp-quiz-bc")
    p.from_iterable(["x"], name="src").broadcast().map(str.upper, name="copy", parallelism=3).sink(name="out")
    job = p.run(backend="step")
    w = watch(close_all, job, view="physical", quiz=True)
    assert [c["id"] for c in w.question["candidates"]] == ["copy[0]", "copy[1]", "copy[2]", "*"]
    r = w.answer("*")
    assert r["correct"] is True and sorted(r["answer"]) == ["copy[0]", "copy[1]", "copy[2]"]
    job.run_until(lambda e: e.instance == "out[0]")             # a cell steps the job: the old reveal goes
    w.refresh()
    while w.stepper["upcoming"] != "src[0]":                    # the source is next, and it has no more items
        w.step()
    assert w.step() is None                                     # a source may route: ask
    assert w.question["state"] == "ask" and w.question["prompt"].startswith("src[0] is about to emit its next item")
    r = w.answer("copy[1]")
    assert r["scored"] is False and r["correct"] is None and "finished its stream" in r["verdict"]


# ----------------------------------------------------------------------------- breakpoints
def test_a_breakpoint_on_a_step_job_is_highlighted_with_its_queue(close_all):
    job = wordcount("insp-bp").run(backend="step")
    job.break_when(first_packet="upper[1]")
    w = watch(close_all, job, view="physical", rate=10)
    w.play()
    wait_for(lambda: bool(w.breakpoint_hit), 5)
    wait_for(lambda: not w.playing, 2)                          # Play stops at the breakpoint
    b = w.get_state()["breakpoint_hit"]
    assert b["reason"] == "first packet into upper[1]" and b["node"] == "upper[1]"
    assert b["edge"] == "split[0]->upper[1]" and b["where"] == "upper[1] ← split[0]" and b["step"] == 2
    assert [(r["n"], r["packet"], r["age"]) for r in b["queue"]] == [
        (1, "#1 'the'", "0 steps"), (2, "#1 'quick'", "0 steps"), (3, "#1 'brown'", "0 steps")]
    assert w.status == "PAUSED" and w.stepper["position"] == 2
    w.resume()                                                  # the header's Resume
    assert w.breakpoint_hit == {} and w.status == "RUNNING"
    w.view = "logical"
    w.step()
    assert w.breakpoint_hit == {}


def test_a_breakpoint_on_threads_shows_where_and_the_queue_then_resume_goes_on(close_all):
    p = wordcount("insp-bp-threads")
    job = p.run(paused=True)
    job.break_when(first_packet="upper[2]")
    job.resume()
    w = watch(close_all, job, view="physical", rate=10)
    wait_for(lambda: w.breakpoint_hit.get("instance") == "upper[2]", 10)
    b = w.breakpoint_hit
    assert b["node"] == "upper[2]" and b["edge"].endswith("->upper[2]") and b["reason"].startswith("first packet")
    assert b["queue_title"].startswith("Input queue of upper[2], oldest first")
    # upper[2] may take the packet between its delivery and the pause: the queue can be empty
    assert all(r["age"].endswith(" s") for r in b["queue"]) and [r["n"] for r in b["queue"]] == \
        list(range(1, len(b["queue"]) + 1))
    assert w.stepper == {} and w.event == {}                    # no step controls on threads
    w.resume()
    job.wait(timeout=30)
    wait_for(lambda: not w.live, 3)
    assert w.breakpoint_hit == {} and w.status == "FINISHED"


# ----------------------------------------------------------------------------- the offline player
def test_player_embeds_every_position_as_patches_that_replay_exactly(close_all, tmp_path):
    job = wordcount("insp-player").run(backend="step")
    job.run_to_end()
    w = watch(close_all, job, view="physical")
    w.seek(5)
    html = w.save_html(tmp_path / "player.html").read_text(encoding="utf-8")
    data = player_data(html)
    n = len(job.recording())
    assert data["shown"] == data["total"] == n and len(data["frames"]) == n + 1
    states, _ = w._player_states()
    replayed = [data["frames"][0]]
    for patch in data["frames"][1:]:
        replayed.append(apply_patch(replayed[-1], patch))
    assert replayed == json.loads(json.dumps(states))           # every position, exactly
    events = job.recording().events
    assert [s["event"].get("text") for s in replayed[1:]] == [str(e) for e in events]
    assert replayed[3]["event"]["moves"][0]["edge"] == f"{events[2].instance}->{events[2].targets[0]}"
    assert data["quiz"]["0"]["ask"]["candidates"][0]["id"] == "split[0]"
    assert data["quiz"]["0"]["verdicts"]["split[0]"]["correct"] is True
    assert w.stepper["position"] == 5 and job.position == 5     # saving does not move the job
    # offline: no URL but the SVG namespace, nothing loaded from outside
    assert not re.search(r"<[^>]+\s(src|href)\s*=", html.replace(player._script(), ""), re.I)
    assert set(re.findall(r"https?://[^\s\"'`]+", html)) == {"http://www.w3.org/2000/svg"}
    assert "All " in html and html.count("</script>") == 2


def test_player_caps_its_frames_and_says_so(close_all, monkeypatch):
    monkeypatch.setattr(controls, "MAX_FRAMES", 6)
    job = wordcount("insp-cap").run(backend="step")
    job.run_to_end()
    w = watch(close_all, job)
    html = w.to_html()
    data = player_data(html)
    total = len(job.recording())
    assert data["shown"] == 6 and data["total"] == total and len(data["frames"]) == 7
    assert f"the first 6 of {total} steps" in html and data["note"] in html


def test_player_keeps_hostile_names_as_escaped_data(close_all):
    job = wordcount("insp-odd", split=HOSTILE, upper=SCRIPT_END).run(backend="step")
    job.run_to_end(max_steps=12)
    w = watch(close_all, job, view="physical")
    html = w.to_html()
    page = html.replace(player._script(), "")                   # the code's comments name the example
    assert HOSTILE not in page and "<b>x</b>" not in page
    assert html.count("</script>") == 2                         # the JSON block's and the module's ends
    data = player_data(html)
    nodes = [n["id"] for n in data["frames"][0]["graph"]["nodes"]]
    assert f"{HOSTILE}[0]" in nodes and f"{SCRIPT_END}[2]" in nodes
    assert any(SCRIPT_END in str(f) for f in data["frames"][1:])


def test_player_script_is_the_widget_code_and_never_writes_markup():
    js = (player.STATIC / "player.js").read_text()
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|fetch\(", js)
    assert "</script" not in player._script().lower()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=2), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(json_values, json_values)
def test_a_patch_turns_the_old_value_into_the_new(old, new):
    patch = player.diff(old, new)
    assert (old if patch is None else apply_patch(old, patch)) == new


# ----------------------------------------------------------------------------- GIF
def test_save_gif_animates_the_step_run_a_frame_per_position(close_all, tmp_path):
    from PIL import Image, ImageChops

    job = wordcount("insp-gif").run(backend="step")
    job.run_to_end()
    w = watch(close_all, job, view="physical")
    out = w.save_gif(tmp_path / "deep" / "run.gif", fps=4, max_frames=6)
    with Image.open(out) as im:
        assert im.format == "GIF" and im.info["loop"] == 0
        durations, frames = [], []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
            frames.append(im.convert("RGB"))
    assert sum(durations) == 7 * 250            # positions 0..6 at 4 frames a second
    assert len(frames) == 7                     # every step changes the caption at least
    assert ImageChops.difference(frames[0], frames[6]).getbbox() is not None
    assert w.stepper["position"] == len(job.recording())   # writing it moved nothing
    with pytest.raises(ValueError, match="fps > 0 and max_frames >= 1"):
        w.save_gif(tmp_path / "x.gif", fps=0)
    threads_job = wordcount("insp-gif-threads").run().wait(timeout=30)
    with pytest.raises(TypeError, match="stepping needs a step job"):
        watch(close_all, threads_job).save_gif(tmp_path / "y.gif")

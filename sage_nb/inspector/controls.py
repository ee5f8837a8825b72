"""The step-mode half of :class:`~sage_nb.inspector.widget.Inspector`: step, back, seek, play, answer.

On a step job (``p.run(backend="step")``) or a :class:`~sage_nb.runtime.recording.Recording`,
the inspector shows one position of the run at a time and moves through it with the same
public methods as its buttons. Play steps at the widget's ``rate`` from the inspector's one
updater thread (never from the browser's timers); it stops at the end, at a breakpoint, and
before a quiz question. With ``quiz=True`` a step that is about to make a routing decision
first asks which instance will get the packet; :meth:`StepControls.answer` makes the step
and reveals where it went, why, and the score.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import render
from .events import breakpoint_view, event_view, stepper_view
from .quiz import Quiz, ask, replay_entry, routes_next
from .stepping import StepSource
from .tables import Rates, key_distribution, routing_rows
from .updater import Updater
from .view import Memo, error_view, graph_view, status_view

if TYPE_CHECKING:  # pragma: no cover
    import threading

    from ..communication.router import RoutingDecision
    from ..metrics import JobSnapshot

__all__ = ["MAX_FRAMES", "StepControls"]

MAX_FRAMES = 2000               # positions the HTML player embeds, at most
STEP_RATES = Rates({}, {}, {}, {}, average=True)   # time is counted in steps: no rates per second


class StepControls:
    """Mixed into ``Inspector``; reads ``self._source``, ``self._lock``, ``self._snap``, traits."""

    _source: Any
    _lock: threading.RLock
    _snap: JobSnapshot | None
    _updater: Updater | None
    _quiz: Quiz
    view: str
    playing: bool
    quiz: bool
    question: dict[str, Any]

    @property
    def stepping(self) -> bool:
        """True when watching a step job or a recording (the step controls are on)."""
        return isinstance(self._source, StepSource)

    # ------------------------------------------------------------------ public: the buttons
    def step(self) -> Any:
        """Step once and show it; returns the :class:`StepEvent` (None at the end).

        With the quiz on, a step about to make a routing decision asks first and returns
        None: :meth:`answer` then makes the step. Stepping while a question waits skips it.
        """
        return self._advance()

    def back(self, n: int = 1) -> Any:
        """Show the state ``n`` steps earlier; returns the event that led there (None at 0)."""
        return self.seek(self._src().position - n)

    def seek(self, position: int) -> Any:
        """Show the state after the first ``position`` events (the scrubber); returns that event."""
        src = self._src()
        with self._lock:
            self._set_playing(False)
            self._quiz.clear()
            src.seek(position)
            self._show()
            return src.event()

    def play(self) -> None:
        """Step at ``rate`` steps a second until the end, a breakpoint, a question or ``pause()``."""
        src = self._src()
        if src.at_end:
            return
        self._set_playing(True)
        self._start_updater()

    def answer(self, instance: str) -> dict[str, Any]:
        """Answer the waiting quiz question with an instance name ('*': every instance of a
        broadcast): the step is made, and the reveal (``correct``, ``answer``, ``routes``,
        ``verdict``, ``score``) is returned and shown."""
        src = self._src()
        with self._lock:
            if not self._quiz.asking:
                raise ValueError("no quiz question is waiting: turn the quiz on (quiz=True) and press Step")
            ids = [c["id"] for c in self._quiz.current["candidates"]]
            if instance not in ids:
                raise ValueError(f"{instance!r} is not a candidate; choose one of {ids}")
            ev = src.step()
            self._quiz.reveal(instance, ev)
            self._show()
            return self._quiz.view()

    # ------------------------------------------------------------------ moving
    def _step_message(self, action: str, content: dict[str, Any]) -> None:
        """A button of the step bar, pressed in the browser."""
        if action in ("step", "back", "play"):
            getattr(self, action)()
        elif action == "seek":
            self.seek(int(content.get("position", 0)))
        elif action == "answer":
            self.answer(str(content.get("instance", "")))

    def _quiz_toggled(self, on: bool) -> None:
        if not self.stepping:
            return
        with self._lock:
            self._quiz.clear()
            question = self._question() if on else None
            if question is not None:              # ask at once when the next step routes
                self._quiz.ask(question)
                self._set_playing(False)
            self.question = self._quiz.view() if on else {}

    def _src(self) -> StepSource:
        if not isinstance(self._source, StepSource):
            raise TypeError("stepping needs a step job (p.run(backend='step')) or a Recording "
                            "(sage_nb.load_recording(path)); this inspector watches "
                            f"{self._source.key!r}")
        return self._source

    def _advance(self) -> Any:
        src = self._src()
        with self._lock:
            if self.quiz and self._quiz.asking:          # Step while a question waits: skip it
                ev = src.step()
                self._quiz.reveal(None, ev)
            else:
                self._quiz.clear()
                question = self._question() if self.quiz else None
                if question is not None:
                    self._quiz.ask(question)
                    self._set_playing(False)
                    self.question = self._quiz.view()
                    return None
                ev = src.step()
            if ev is None or src.at_end or src.halt() is not None:
                self._set_playing(False)
            self._show()
            return ev

    def _tick(self) -> bool:
        """The updater thread's turn: one step while playing (True if it played)."""
        if not self.playing:
            return False
        self._advance()
        return True

    def _question(self) -> dict[str, Any] | None:
        """The quiz question before the next step, when that step makes a routing decision."""
        src = self._src()
        up = src.upcoming()
        if up is None or src.at_end:
            return None
        plan, nxt = src.plan, src.next_event()
        if nxt is not None:
            return ask(plan, src.position, up, payload=nxt.payload, seq=nxt.seq) \
                if routes_next(plan, up, event=nxt) else None
        snap = src.snapshot()
        state = next((t.state for t in snap.tasks if t.name == up), "")
        head = next(iter(src.queue_contents(up, 1)), None)
        if not routes_next(plan, up, state=state, head=head):
            return None
        return ask(plan, src.position, up, payload=None if head is None else head.payload,
                   seq=None if head is None else head.seq)

    def _set_playing(self, flag: bool) -> None:
        self._source.playing = flag
        self.playing = flag

    def _show(self) -> None:
        """Read the state on view now and show it (a button's answer, not the thread's)."""
        self._source.invalidate()
        snap = self._source.read()
        if snap is not None:
            self._apply(snap)  # type: ignore[attr-defined]

    def _start_updater(self) -> None:
        """Make sure the one updater thread runs (a new one if the last ended)."""
        old = self._updater
        if old is not None and old.alive and not self._source.done:
            old.wake()
            return
        if old is not None:
            old.stop(timeout=1.0)     # it may be on its way out: never two at once
        self._updater = self._make_updater()  # type: ignore[attr-defined]
        self.live = True
        self._updater.start()

    # ------------------------------------------------------------------ view models
    def _step_state(self, snap: JobSnapshot) -> dict[str, Any]:
        src = self._src()
        position = int(snap.extra.get("step", src.position))
        if self._quiz.asking and self._quiz.current.get("position") != position:
            self._quiz.clear()            # the job moved under the question (a cell stepped it)
        halt = src.halt()
        hit, queued = halt if halt is not None else (None, ())
        return {"stepper": self._stepper(snap, position, src.maximum, src.done, src.upcoming()),
                "event": event_view(src.event(position), snap, self.view),
                "breakpoint_hit": breakpoint_view(hit, queued, snap, self.view),
                "question": self._quiz.view() if self.quiz else {}}

    def _stepper(self, snap: JobSnapshot, position: int, maximum: int, done: bool,
                 upcoming: str | None) -> dict[str, Any]:
        src = self._src()
        return stepper_view(snap, position=position, maximum=maximum, done=done,
                            readonly=src.readonly, upcoming=upcoming, policy=src.policy,
                            truncated=bool(src.rec.truncated), view=self.view)

    def _player_data(self) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
        """What the HTML player embeds: settings and quiz entries, the states, the step count."""
        src = self._src()
        states, total = self._player_states()
        quiz = {str(i): e for i in range(len(states) - 1)
                if (e := replay_entry(src.plan, i, src.rec.events[i])) is not None}
        meta = {"title": self.title, "palette": self.palette, "view": self.view,  # type: ignore[attr-defined]
                "rate": self.rate, "quiz": quiz}  # type: ignore[attr-defined]
        return meta, states, total

    def save_gif(self, path: str | Path, *, fps: float = 2.0, max_frames: int = 200, dpi: int = 72) -> Path:
        """Write an animated GIF of the step run, a frame per position from before the first step
        (at most ``max_frames`` steps): the graph with its loads and states, the edges the step's
        packets took in the path colour and what happened as the caption. For slides and pages
        where the HTML player cannot run. Raises ``TypeError`` outside step mode and
        ``ValueError`` for ``fps`` or ``max_frames`` below what makes a GIF."""
        if not fps > 0 or type(max_frames) is not int or max_frames < 1:
            raise ValueError(f"save_gif needs fps > 0 and max_frames >= 1, got fps={fps!r}, "
                             f"max_frames={max_frames!r}")
        states, total = self._player_states(max_frames)
        name = self.title  # type: ignore[attr-defined]
        pngs = []
        for i, st in enumerate(states):
            ev = st["event"]
            caption = f"step {i}/{total}: {ev['title']}" if ev else f"step 0/{total}: before the first step"
            summary = {"pipeline": name, "status": st["status"], "elapsed_text": caption}
            pngs.append(render.graph_png(st["graph"], summary, self.palette,  # type: ignore[attr-defined]
                                         path=[m["edge"] for m in ev.get("moves", ()) if m["edge"]], dpi=dpi))
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(render.gif(pngs, fps))
        return out

    def _player_states(self, limit: int | None = None) -> tuple[list[dict[str, Any]], int]:
        """The view model at every recorded position (at most ``limit`` steps, default
        ``MAX_FRAMES``), and how many steps the recording holds; read from the recording, the
        job does not move."""
        src = self._src()
        total = src.length
        shown = min(total, MAX_FRAMES if limit is None else limit)
        states = []
        rows: dict[int, tuple[RoutingDecision, dict[str, Any]]]  # (a declaration only)
        memo, rows = Memo(), {}      # frames share what a step did not change: build it once
        for i in range(shown + 1):
            snap = src.snapshot_at(i)
            nxt = src.rec.events[i].instance if i < shown else None
            states.append({
                "graph": graph_view(snap, self.view, STEP_RATES, memo), "rows": routing_rows(snap.trace, memo=rows),
                "keydist": key_distribution(snap), "status": snap.status, "summary": status_view(snap),
                "error": error_view(snap), "event": event_view(src.event(i), snap, self.view),
                "stepper": self._stepper(snap, i, shown, True, nxt)})
        return states, total

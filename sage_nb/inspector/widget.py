"""``Inspector``: the live widget — graph, routing log, key distribution, timeline, controls.

An :class:`anywidget.AnyWidget` with a few synced traits; the browser side is the single
file ``static/inspector.js``. The model is the truth: one updater thread turns snapshots
into view models (:mod:`.view`, :mod:`.tables`, :mod:`.events`) and sets traits inside
``hold_sync()``; the JS only draws them. The browser talks back through four traits
(``view``, ``selected``, ``packet``, ``quiz``) and messages (pause, resume; in step mode
step, back, seek, play, answer — see :mod:`.controls`).
"""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from ..metrics import JobSnapshot
from . import player, render, report
from .controls import STEP_RATES, StepControls
from .events import breakpoint_view
from .history import LoadHistory, RateWindow
from .palette import palette
from .quiz import Quiz
from .source import make_source
from .tables import key_distribution, packet_path, routing_rows, what_if_view
from .updater import MAX_RATE, MIN_RATE, Registry, Updater
from .view import VIEWS, error_view, graph_view, status_view

__all__ = ["Inspector"]

STATIC = Path(__file__).parent / "static"
ENDED = ("FINISHED", "CANCELLED", "FAILED")
TIMELINE_EVERY = 4.0          # seconds between timeline renderings while a job runs, at least
TIMELINE_DUTY = 0.01          # ... and at most this share of a core spent rendering it
ROWS_EVERY = 0.5              # seconds between routing log refreshes while a job runs, at least
AUTO_PHYSICAL_MAX = 12        # default to the physical view up to this many instances

_registry = Registry()


class Inspector(StepControls, anywidget.AnyWidget):
    """A live view of a job: where packets go, how full every queue is, why.

    ``Inspector(job)`` follows a running job until it ends (and shows a finished one);
    ``Inspector(pipeline)`` shows its compiled plan, then follows its newest job.
    ``Inspector(snapshot)`` shows one frozen :class:`~sage_nb.metrics.JobSnapshot`.
    A new inspector on the same job or pipeline closes the previous one, so re-running a
    cell leaves no thread behind. ``save_html()`` / ``save_png()`` keep the final state.

    On a step job (``p.run(backend="step")``) or a recording (``sage_nb.load_recording``)
    it steps: :meth:`step`, :meth:`back`, :meth:`seek`, :meth:`play` / :meth:`pause` (the
    buttons), ``quiz=True`` asks where each packet goes before it moves (:meth:`answer`),
    and ``save_html()`` writes an offline player of the run. While a breakpoint holds the
    job, it shows where and why, with the queue contents of that instance.

    The inspector only calls ``job.snapshot()`` (and ``pause()``/``resume()`` on request),
    at most ``rate`` (<= 10) times a second; the routing log follows twice a second and the
    timeline every few seconds. Its updates take at most 2 % of a core (a costly update is
    followed by a longer pause: the effective rate drops) and the timeline renderings at most
    1 %; :attr:`updater_cost` tells what watching has taken so far. Its thread ends within a
    second of the job's end, or of ``close()``; on a pipeline it keeps a light watch (one look
    a second) for the next run until it is closed.

    >>> from sage_nb.demo import demo_pipeline
    >>> job = demo_pipeline("doc-inspector").run().wait(timeout=30)
    >>> ins = Inspector(job)                   # a finished job: complete at once, no thread
    >>> ins.status, ins.live, ins.summary["finished"] == ins.summary["instances"]
    ('FINISHED', False, True)
    >>> ins.close()
    """

    _esm = (STATIC / "inspector.js").read_text(encoding="utf-8")
    _css = (STATIC / "inspector.css").read_text(encoding="utf-8")

    view = traitlets.Unicode("logical").tag(sync=True)
    graph = traitlets.Dict().tag(sync=True)
    rows: traitlets.List[Any] = traitlets.List().tag(sync=True)
    keydist: traitlets.List[Any] = traitlets.List().tag(sync=True)
    whatif = traitlets.Dict().tag(sync=True)            # the spread asked for in the key panel, or {}
    status = traitlets.Unicode("").tag(sync=True)
    summary = traitlets.Dict().tag(sync=True)
    error = traitlets.Dict().tag(sync=True)
    selected = traitlets.Dict().tag(sync=True)
    packet = traitlets.Int(-1).tag(sync=True)
    path: traitlets.List[Any] = traitlets.List().tag(sync=True)
    timeline = traitlets.Unicode("").tag(sync=True)
    rate = traitlets.Float(5.0).tag(sync=True)
    live = traitlets.Bool(False).tag(sync=True)
    notice = traitlets.Unicode("").tag(sync=True)
    palette = traitlets.Dict().tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)
    # step mode (a step job or a recording); all {} / False otherwise
    stepper = traitlets.Dict().tag(sync=True)          # scrubber: position, max, what moves next
    event = traitlets.Dict().tag(sync=True)            # the event that led to the position shown
    playing = traitlets.Bool(False).tag(sync=True)
    quiz = traitlets.Bool(False).tag(sync=True)        # predict-then-reveal (the browser toggles it)
    question = traitlets.Dict().tag(sync=True)         # the question or the reveal, and the score
    breakpoint_hit = traitlets.Dict().tag(sync=True)   # where and why a breakpoint holds the job

    def __init__(self, target: Any, *, view: str | None = None, rate: float = 5.0, quiz: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(rate=rate, palette=palette(), **kwargs)
        self._source = make_source(target)
        self._quiz = Quiz()
        self._updater: Updater | None = None
        self._lock = threading.RLock()
        self._snap: JobSnapshot | None = None
        self._rates = RateWindow()
        self._history = LoadHistory()
        self._timeline_at = time.monotonic()     # the first live rendering waits for some history
        self._timeline: render.Timeline | None = None     # built at its first rendering
        self._timeline_cost = 0.08                # a guess, until the first rendering is timed
        self._rows_mark: tuple[Any, ...] = ()
        self._rows_at = float("-inf")
        self._rows_cache: list[dict[str, Any]] = []
        self._closed = False
        self._auto_view = view is None
        if view is not None:
            self.view = view
        self.title = self._source.label
        self.on_msg(self._on_message)
        _registry.claim(self._source.key, self)
        self._updater = self._make_updater()
        first = self._source.read()
        if first is not None:
            self._apply(first)
        self.quiz = quiz and self.stepping
        if not self._source.finished:
            self.live = True
            self._updater.start()

    def _make_updater(self) -> Updater:
        return Updater(self._source, self._apply, lambda: self.rate, self._on_error,
                       name=f"sage-inspector[{self._source.key}]", on_exit=self._on_exit,
                       tick=self._tick if self.stepping else None)

    # -------------------------------------------------------------- traits the browser sets
    @traitlets.validate("view")
    def _valid_view(self, proposal: dict[str, Any]) -> str:
        if proposal["value"] not in VIEWS:
            raise traitlets.TraitError(f"view must be one of {list(VIEWS)}, not {proposal['value']!r}")
        return proposal["value"]

    @traitlets.validate("rate")
    def _valid_rate(self, proposal: dict[str, Any]) -> float:
        return float(min(MAX_RATE, max(MIN_RATE, proposal["value"])))

    @traitlets.observe("view")
    def _view_changed(self, change: dict[str, Any]) -> None:
        self._auto_view = False
        self._refresh()

    @traitlets.observe("packet")
    def _packet_changed(self, change: dict[str, Any]) -> None:
        with self._lock:
            self.path = self._path(self._snap)

    @traitlets.observe("quiz")
    def _quiz_changed(self, change: dict[str, Any]) -> None:
        self._quiz_toggled(change["new"])

    def _on_message(self, widget: Any, content: dict[str, Any], buffers: list[Any]) -> None:
        action = content.get("type") if isinstance(content, dict) else None
        try:
            if action in ("pause", "resume"):
                self.pause() if action == "pause" else self.resume()
            elif action == "what_if":
                self.what_if(str(content.get("operator", "")), content.get("parallelism"))
            else:
                self._step_message(str(action), content)
        except (TypeError, ValueError) as exc:     # shown, never raised into the kernel's log
            self.notice = f"{action}: {exc}"

    # -------------------------------------------------------------- public
    def pause(self) -> None:
        """Pause: stop playing (step mode), or pause the watched job (``job.pause()``; no
        effect once it has ended)."""
        if self.stepping:
            self._set_playing(False)
        else:
            self._source.control("pause")

    def resume(self) -> None:
        """Resume the watched job (``job.resume()``), or let it go on from a breakpoint hit."""
        self._source.control("resume")
        if self.stepping:
            self._show()

    def what_if(self, operator: str, parallelism: Any) -> None:
        """Show in the key panel how the packets ``operator`` received so far would spread over
        ``parallelism`` instances (``job.what_if``); the browser asks with the panel's selector.
        Raises ``ValueError`` without a job to ask (a snapshot or a plan) or for bad input."""
        job = self._source.job()
        if job is None or not hasattr(job, "what_if"):
            raise ValueError("what if needs the job's key counts: inspect a job, not a snapshot or a plan")
        try:
            spread = job.what_if(operator, parallelism)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        snap = self._snap
        at = "" if snap is None else "the keys of the whole run" if snap.status in ENDED else \
            f"the keys counted by {snap.elapsed:.1f} s"
        self.whatif = what_if_view(spread, at)

    @property
    def snapshot(self) -> JobSnapshot | None:
        """The latest snapshot shown."""
        return self._snap

    @property
    def updater_cost(self) -> tuple[int, float]:
        """(updates, CPU seconds) of the updater thread while the job ran, timeline renderings
        included: over the job's duration, the share of a core that watching took from it."""
        updater = self._updater
        return (updater.updates, updater.cpu) if updater is not None else (0, 0.0)

    def close(self) -> None:
        """Stop the updater thread (within a second) and close the widget."""
        self._closed = True
        updater = getattr(self, "_updater", None)
        if updater is not None:
            updater.stop(timeout=1.0)
            _registry.release(self._source.key, self)
        super().close()
        self.live = False

    def refresh(self) -> None:
        """Read the watched job's snapshot now and show it (the updater does this live)."""
        if self._closed:
            return
        if self.stepping:
            self._show()
            return
        snap = self._source.read()
        if snap is not None:
            self._apply(snap)

    def save_html(self, path: str | Path) -> Path:
        """Write a self-contained HTML file that works offline: a report of the current state,
        or, in step mode, a player of the run (step, back, play, scrub; at most
        :data:`~sage_nb.inspector.controls.MAX_FRAMES` steps)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(self.to_html(), encoding="utf-8")
        return out

    def save_png(self, path: str | Path) -> Path:
        """Write a PNG of the graph with its loads (matplotlib; for slides and terminals)."""
        self.refresh()
        out = Path(path)
        out.write_bytes(render.graph_png(self.graph, self.summary, self.palette))
        return out

    def to_html(self) -> str:
        """The HTML report (in step mode: the player) as a string."""
        self.refresh()
        if self.stepping:
            return player.render_player(*self._player_data())
        return report.render_html(self._report_data())

    # -------------------------------------------------------------- updates
    def _apply(self, snap: JobSnapshot) -> None:
        if self._closed:
            return
        with self._lock:
            if self.stepping and snap.extra.get("step", self._source.position) != self._source.position:
                self._source.invalidate()       # the job moved on since this was read: read again
                return
            if self._snap is not None and snap.job_id != self._snap.job_id:
                self._rates.reset()
                self.packet = -1
                self.whatif = {}   # (it was the previous job's)
            if self._snap is None and self._auto_view:
                self.set_trait("view", "physical" if len(snap.tasks) <= AUTO_PHYSICAL_MAX else "logical")
            self._snap = snap
            self._rates.add(snap)
            self._history.add_snapshot(snap)
            state = self._state(snap)
            with self.hold_sync():
                for name, value in state.items():
                    setattr(self, name, value)

    def _refresh(self) -> None:
        with self._lock:
            if self._snap is not None:
                state = {"graph": self._graph(self._snap), "path": self._path(self._snap)}
                if self.stepping:
                    state.update(self._step_state(self._snap))
                with self.hold_sync():
                    for name, value in state.items():
                        setattr(self, name, value)

    def _graph(self, snap: JobSnapshot) -> dict[str, Any]:
        if self.stepping:
            return graph_view(snap, self.view, STEP_RATES)
        return graph_view(snap, self.view, self._rates.rates(average=snap.status in ENDED))

    def _path(self, snap: JobSnapshot | None) -> list[str]:
        return packet_path(snap, self.packet, self.view) if snap is not None and self.packet >= 0 else []

    def _rows(self, snap: JobSnapshot, now: float, at_once: bool) -> list[dict[str, Any]]:
        """The routing log, remade when the trace moved. While a job runs, at most every
        ``ROWS_EVERY`` s: a log is read, not watched, and its rows were over a third of an
        update's cost (building them and sending them to the browser)."""
        mark = (snap.job_id, len(snap.trace), snap.trace[-1].seq if snap.trace else None, snap.trace_skipped)
        if mark != self._rows_mark and (at_once or now - self._rows_at >= ROWS_EVERY):
            self._rows_mark, self._rows_cache, self._rows_at = mark, routing_rows(snap.trace), now
        return self._rows_cache

    def _state(self, snap: JobSnapshot) -> dict[str, Any]:
        now = time.monotonic()
        final = self._source.finished or snap.status in ENDED     # nothing more will come
        state: dict[str, Any] = {
            "graph": self._graph(snap), "rows": self._rows(snap, now, at_once=final or self.stepping),
            "keydist": key_distribution(snap), "status": snap.status,
            "summary": status_view(snap), "error": error_view(snap), "path": self._path(snap),
        }
        if self.stepping:         # time is counted in steps: no timeline over seconds
            return {**state, **self._step_state(snap)}
        halt = self._source.halt()
        hit, queued = halt if halt is not None else (None, ())
        state["breakpoint_hit"] = breakpoint_view(hit, queued, snap, self.view)
        if final or now - self._timeline_at >= max(TIMELINE_EVERY, self._timeline_cost / TIMELINE_DUTY):
            start = time.thread_time()
            self._timeline = self._timeline or render.Timeline()
            self._timeline.set_title(f"buffer load over time — {snap.pipeline}")
            png = self._timeline.png(self._history, final=final)
            state["timeline"] = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            self._timeline_at, self._timeline_cost = now, time.thread_time() - start
        return state

    def _on_error(self, message: str) -> None:
        self.notice = message

    def _on_exit(self) -> None:
        self.live = False

    def _report_data(self) -> dict[str, Any]:
        with self._lock:
            return {"title": self.title, "graph": self.graph, "rows": self.rows,
                    "keydist": self.keydist, "summary": self.summary, "error": self.error,
                    "timeline": self.timeline, "palette": self.palette, "path": list(self.path)}

    # -------------------------------------------------------------- display
    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The widget, plus static renderings for frontends that cannot run widgets.

        text/plain and text/html (an inline SVG) always; image/png only once the job has
        ended, because rendering it takes the GIL for a moment the job would feel.
        """
        bundle = super()._repr_mimebundle_(**kwargs)
        data, meta = bundle if isinstance(bundle, tuple) else (bundle or {}, {})
        static = self._report_data()
        data = {**data, "text/plain": report.render_text(static), "text/html": report.render_fragment(static)}
        if not self.live:
            png = render.graph_png(self.graph, self.summary, self.palette, dpi=100)
            data["image/png"] = base64.b64encode(png).decode("ascii")
        return data, meta

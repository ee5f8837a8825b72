"""Predict-then-reveal: before a routing decision, ask which instance will get the packet.

A question is made from the compiled plan (``ExecutionGraph.to_dict()``, kept in every
recording): the ``groups`` of the instance that moves next say which operator it sends to,
with which strategy, over which instances. What the packet is comes from the recorded event
when replaying, else from the head of the instance's input queue. The answer is the step's
own ``targets``, and its ``routes`` explain it.

>>> plan = {"edges": [{"source": "a", "target": "b", "strategy": "round_robin", "key": None}],
...         "instances": [{"name": "a[0]", "operator": "a", "kind": "source", "groups": [
...             {"target": "b", "strategy": "round_robin",
...              "connections": [{"target": "b[0]"}, {"target": "b[1]"}]}]}]}
>>> q = ask(plan, 0, "a[0]", payload="'x'", seq=1)   # None when only one instance could get it
>>> q["prompt"], [c["id"] for c in q["candidates"]]
("a[0] is about to emit packet #1 'x'. Which b instance gets it?", ['b[0]', 'b[1]'])
>>> quiz = Quiz()
>>> quiz.ask(q)
>>> from sage_nb.runtime.recording import StepEvent
>>> quiz.reveal("b[0]", StepEvent(1, "packet", "a[0]", seq=1, payload="'x'", targets=("b[0]",),
...             outputs=("'x'",), routes=("b: round-robin counter 0 → 1 → b[0]",)))["verdict"]
'Right: b[0] got it.'
>>> quiz.score
{'right': 1, 'answered': 1}
"""

from __future__ import annotations

from typing import Any

from .tables import strategy_label

__all__ = ["EVERY", "Quiz", "ask", "check", "replay_entry", "routes_next"]

EVERY = "*"     # the candidate "every instance" of a broadcast
NOT_ROUTING = ("backpressured", "failed", "cancelled", "finished")   # a step that routes nothing


def _instance(plan: dict[str, Any], name: str) -> dict[str, Any]:
    return next((i for i in plan.get("instances", ()) if i.get("name") == name), {})


def routes_next(plan: dict[str, Any], instance: str | None, *, state: str = "", head: Any = None,
                event: Any = None) -> bool:
    """Will the next step of ``instance`` make a routing decision?

    Replaying (``event`` known): it did. Live: the instance sends somewhere, is ready to work
    (not holding a full outbox, not failed or finished), and is a source or has a data packet
    at the head of its queue (``head``, a ``QueuedPacket``). A source may still turn out to be
    exhausted; the reveal then says so and the question is not scored.
    """
    if event is not None:
        return event.kind == "packet" and bool(event.routes)
    inst = _instance(plan, instance or "")
    if not inst.get("groups") or state in NOT_ROUTING:
        return False
    return inst.get("kind") == "source" or (head is not None and head.kind == "packet")


def ask(plan: dict[str, Any], position: int, instance: str, *, payload: str | None = None,
        seq: int | None = None) -> dict[str, Any] | None:
    """The question before step ``position + 1``: which instance of the first group gets it
    (None when there is nothing to choose: a single instance downstream)."""
    inst = _instance(plan, instance)
    group = inst["groups"][0]
    op, strategy = group["target"], group["strategy"]
    members = [c["target"] for c in group["connections"]]
    if len(members) < 2:
        return None
    edge: dict[str, Any] = next(
        (e for e in plan.get("edges", ()) if e.get("source") == inst.get("operator")
         and e.get("target") == op), {})
    packet = f"packet #{seq} {payload}" if seq is not None else (payload or "")
    if inst.get("kind") == "source":
        action = f"emit {packet}" if packet else "emit its next item"
    else:
        action = f"process {packet}" if packet else "process the packet at the head of its queue"
    several = inst.get("kind") == "flat_map"
    if strategy == "broadcast":
        question = f"Which {op} instances get it?"
    else:
        question = f"Which {op} instance gets {'its first output' if several else 'it'}?"
    candidates = [{"id": m, "label": m} for m in members]
    if strategy == "broadcast":
        candidates.append({"id": EVERY, "label": f"all {len(members)} of them"})
    return {"state": "ask", "position": position, "step": position + 1, "instance": instance,
            "operator": op, "strategy": strategy, "instances": members,
            "rule": f"{inst.get('operator', instance)} → {op}: {strategy_label(strategy, edge.get('key'))}",
            "prompt": f"{instance} is about to {action}. {question}", "candidates": candidates}


def _why_not(ev: Any) -> str:
    if ev is None:
        return "the job has ended"
    if ev.kind == "finish":
        return f"{ev.instance} had no more input: it finished its stream"
    if ev.kind == "packet":
        return "the function produced no output for it"
    return f"the step was a '{ev.kind}'"


def check(question: dict[str, Any], guess: str | None, ev: Any) -> dict[str, Any]:
    """The reveal: where the packet went (``answer``; ``delivered``: every instance of the group
    that got an output of the step), whether ``guess`` was right, and why it went there."""
    op, members = question["operator"], question["instances"]
    sent = zip(ev.targets, ev.outputs, strict=False) if ev is not None else ()
    got = [t for t, out in sent if t in members and out != "stop"]     # data, not stop signals
    routes = [r for r in (ev.routes if ev is not None else ()) if r.startswith(f"{op}:")]
    broadcast = question["strategy"] == "broadcast"
    result = {**question, "state": "revealed", "guess": guess, "answer": got if broadcast else got[:1],
              "delivered": got, "routes": routes, "event": "" if ev is None else str(ev)}
    if not got:
        return {**result, "correct": None, "scored": False,
                "verdict": f"No packet went to {op} in this step: {_why_not(ev)}. Not scored."}
    correct = guess == EVERY if broadcast else guess == got[0]
    said = "every instance" if guess == EVERY else guess
    where = f"a copy went to each of the {len(got)} instances" if broadcast else f"{got[0]} got it"
    if guess is None:
        verdict = f"Skipped: {where}."
    elif correct:
        verdict = f"Right: {where}."
    else:
        verdict = f"Not this time: {where}, not {said}."
    return {**result, "correct": correct, "scored": guess is not None, "verdict": verdict}


def replay_entry(plan: dict[str, Any], position: int, ev: Any) -> dict[str, Any] | None:
    """The question before a recorded event and its reveal for every possible answer (the HTML
    player asks offline, without Python): ``{"ask", "reveal", "verdicts": {guess: ...}}``;
    the guess ``""`` is a skipped question."""
    if ev is None or not routes_next(plan, ev.instance, event=ev):
        return None
    question = ask(plan, position, ev.instance, payload=ev.payload, seq=ev.seq)
    if question is None:
        return None
    verdicts = {}
    for guess in [c["id"] for c in question["candidates"]] + [None]:
        r = check(question, guess, ev)
        verdicts["" if guess is None else guess] = {k: r[k] for k in ("correct", "scored", "verdict")}
    return {"ask": question, "reveal": {k: r[k] for k in ("answer", "delivered", "routes", "event")},
            "verdicts": verdicts}


class Quiz:
    """The current question or reveal, and the score (``right`` out of ``answered``)."""

    def __init__(self) -> None:
        self.right = 0
        self.answered = 0
        self.current: dict[str, Any] = {}

    @property
    def score(self) -> dict[str, int]:
        return {"right": self.right, "answered": self.answered}

    @property
    def asking(self) -> bool:
        return self.current.get("state") == "ask"

    def ask(self, question: dict[str, Any]) -> None:
        self.current = question

    def reveal(self, guess: str | None, ev: Any) -> dict[str, Any]:
        """Reveal the pending question after its step ``ev``; counts a scored answer."""
        result = check(self.current, guess, ev)
        if result["scored"]:
            self.answered += 1
            self.right += bool(result["correct"])
        self.current = result
        return result

    def clear(self) -> None:
        self.current = {}

    def view(self) -> dict[str, Any]:
        return {**self.current, "score": self.score} if self.current else {"score": self.score}

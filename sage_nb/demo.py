"""The demo job: a word count with a hash-partitioned stage and a broadcast stage, on threads.

``sage-nb demo`` runs it and prints, per connection, the packets routed and the peak
buffer load, and the key → instance table of the hash-partitioned stage.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from .graph import Pipeline
from .metrics import JobSnapshot

__all__ = ["TEXT", "demo_pipeline", "report"]

TEXT = """the quick brown fox jumps over the lazy dog
a stream is a sequence of packets and a router decides where each packet goes
round robin spreads the packets hash keeps a key on one instance broadcast copies
the lazy dog sleeps while the quick fox routes packets through the graph""".splitlines() * 25


class CountWords:
    """A running count per word; one instance per parallel instance (keyed state)."""

    def open(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, word: str) -> tuple[str, int]:
        time.sleep(0.0002)  # a slow stage, so that its input buffers fill up
        self.counts[word] += 1
        return word, self.counts[word]


def _word(w: str) -> str:
    return w


def demo_pipeline(name: str = "demo-wordcount") -> Pipeline:
    """lines → split (p=2) → hash(word) → count (p=3) → out; split → broadcast → lengths (p=2) → stats."""
    p = Pipeline(name)
    words = p.from_iterable(TEXT, name="lines").flat_map(str.split, name="split", parallelism=2)
    words.key_by(_word).map(CountWords, name="count", parallelism=3).sink(name="out")
    words.broadcast().map(len, name="lengths", parallelism=2).sink(name="stats")
    return p


def report(snap: JobSnapshot) -> str:
    """Per-connection packets and peak load, then the key → instance table (plain text)."""
    peaks = {t.queue_id: t.queue for t in snap.tasks if t.queue is not None}
    lines = [f"job {snap.job_id}: {snap.status} in {snap.elapsed:.2f} s", "",
             f"{'connection':32} {'strategy':12} {'packets':>8} {'peak load':>10}"]
    for c in snap.connections:
        q = peaks[c.queue_id]
        peak = f"{q.peak}/{q.capacity}" if q.capacity else str(q.peak)
        lines.append(f"{c.source + ' -> ' + c.target:32} {c.strategy:12} {c.packets_sent:>8} {peak:>10}")
    lines += ["", "key -> instance (hash-partitioned stage 'count', top keys per instance):"]
    owner: dict[str, Any] = {}
    for t in snap.tasks:
        for key, n in t.top_keys:
            owner[key] = (t.name, n)
    for t in snap.tasks:
        if t.operator == "count":
            keys = sorted(k for k, (inst, _) in owner.items() if inst == t.name)
            lines.append(f"  {t.name:10} {t.packets_in:5} packets  keys: {', '.join(keys)}")
    return "\n".join(lines)

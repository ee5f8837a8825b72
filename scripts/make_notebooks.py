"""Write the course notebooks in notebooks/ from the cell lists below (run: python scripts/make_notebooks.py).

Each notebook: a short explanation, code that runs in a few seconds on threads, exercises with
hidden solutions (<details>), and assertions at the end so CI catches a notebook that runs
but teaches something false.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent.parent / "notebooks"
M, C = "md", "code"


def exercise(question: str, solution: str) -> tuple[str, str]:
    return (M, f"**Exercise.** {question}\n\n<details><summary>Solution</summary>\n\n```python\n"
               f"{solution.strip()}\n```\n</details>")


NOTEBOOKS: dict[str, list[tuple[str, str]]] = {}

NOTEBOOKS["01_queues_and_descriptors.ipynb"] = [
    (M, "# 1. Queues and queue descriptors\n\nEvery task instance owns **one input queue**. The plan "
        "does not hold queues, it holds *descriptors*: small serialisable records (type, id, capacity) "
        "that create their queue lazily, the first time somebody touches it."),
    (C, "import threading\nimport queue\nfrom sage_nb.communication import PythonQueueDescriptor, "
        "BaseQueueDescriptor\n\nqd = PythonQueueDescriptor(maxsize=3, queue_id=\"demo.in\")\nqd"),
    (M, "A lazy descriptor is plain data: it serialises to JSON and comes back equal. JSON from outside "
        "is validated field by field; nothing in it is imported or unpickled."),
    (C, "text = qd.to_json()\nprint(text)\nsame = BaseQueueDescriptor.from_json(text)\nassert same == qd and "
        "not same.is_initialized()\ntry:\n    BaseQueueDescriptor.from_json('{\"queue_id\": \"x\", "
        "\"queue_type\": \"os.system\"}')\nexcept ValueError as exc:\n    print(\"refused:\", exc)"),
    (M, "`clone()` gives a new id; once the queue exists, the clone **shares** it (SAGE's issue #1112 "
        "came from clones that silently created a second queue)."),
    (C, "qd.put(\"hello\")\ntwin = qd.clone(\"demo.twin\")\nassert twin.get() == \"hello\"\nqd.statistics()"),
    (M, "## A bounded queue blocks\n\nWith 3 slots taken, a 4th `put` waits until a consumer makes room "
        "— that is backpressure. Nothing is ever dropped."),
    (C, "for i in range(3):\n    qd.put(i)\nassert qd.full()\nunblocked = threading.Event()\n\ndef producer():\n"
        "    qd.put(\"fourth\")          # blocks: the queue is full\n    unblocked.set()\n\n"
        "t = threading.Thread(target=producer)\nt.start()\nassert not unblocked.wait(0.2)  # still blocked\n"
        "print(\"consumer takes\", qd.get())\nassert unblocked.wait(5)\nt.join()\nqd.statistics()"),
    exercise("Fill a `PythonQueueDescriptor(maxsize=2)` and call `put(x, timeout=0.1)`. What is raised?",
             "q = PythonQueueDescriptor(maxsize=2)\nq.put(1); q.put(2)\ntry:\n    q.put(3, timeout=0.1)\n"
             "except queue.Full:\n    print('queue.Full, like the standard library')"),
    (C, "# checks: what this notebook taught\nstats = qd.statistics()\nassert stats.capacity == 3 and "
        "stats.peak == 3\nassert [qd.get() for _ in range(3)] == [1, 2, \"fourth\"]\nassert qd.empty()"),
]

NOTEBOOKS["02_round_robin.ipynb"] = [
    (M, "# 2. Round-robin\n\nOne source, a `map` with parallelism 3. Without a key, each upstream instance "
        "sends its packets to the downstream instances in turn: a **counter per group and per upstream "
        "instance**, starting at 0."),
    (C, "import sage_nb as snb\n\np = snb.Pipeline(\"round-robin\")\n"
        "p.from_iterable(range(9), name=\"src\").map(lambda x: x, name=\"work\", parallelism=3)"
        ".sink(name=\"out\")\nplan = p.compile()\nplan"),
    (M, "**Predict** before you run: which instance of `work` receives packet 4?"),
    (C, "job = p.run()\njob.wait(timeout=10)\nsnap = job.snapshot()\n"
        "for c in snap.connections:\n    if c.target_operator == \"work\":\n"
        "        print(f\"{c.source} -> {c.target}: {c.packets_sent} packets\")"),
    (C, "for d in snap.trace[:6]:\n    print(d.seq, d.sender, '->', d.targets, '|', d.explain())"),
    exercise("Run the same pipeline with a source of parallelism 2. Why does `work[0]` now receive "
             "the first packet of *each* source instance?",
             "p2 = snb.Pipeline('rr2')\np2.from_iterable(range(8), parallelism=2).map(lambda x: x, name='work',"
             " parallelism=3).sink(name='out')\nj = p2.run().wait(timeout=10)\n# every upstream instance has "
             "its own counter, and every counter starts at 0"),
    (C, "# checks\nper_instance = {t.name: t.packets_in for t in snap.tasks if t.operator == \"work\"}\n"
        "assert per_instance == {\"work[0]\": 3, \"work[1]\": 3, \"work[2]\": 3}, per_instance\n"
        "assert sorted(job.results(\"out\")) == list(range(9))"),
]

NOTEBOOKS["03_hash_partitioning_and_skew.ipynb"] = [
    (M, "# 3. Hash partitioning and skew\n\n`key_by(f)` makes the next edge **hash-partitioned**: the key "
        "`f(item)` is hashed with a stable hash (the same in every process — Python's `hash()` is not) and "
        "taken modulo the number of instances. Equal keys always meet at the same instance, which is what "
        "keyed state needs."),
    (C, "import sage_nb as snb\nfrom sage_nb.communication import partition\n\n"
        "users = [f\"u{i}\" for i in range(8)]\n{u: partition(u, 4) for u in users}"),
    (C, "class CountPerUser:\n    def open(self):\n        self.counts = {}\n    def __call__(self, user):\n"
        "        self.counts[user] = self.counts.get(user, 0) + 1\n"
        "        return user, self.ctx.parallel_index, self.counts[user]\n\n"
        "events = [users[i % 8] for i in range(400)]\np = snb.Pipeline(\"hash\")\n"
        "p.from_iterable(events, name=\"events\").key_by(lambda u: u).map(CountPerUser, name=\"count\", "
        "parallelism=4).sink(name=\"out\")\njob = p.run().wait(timeout=10)\n"
        "owner = {user: inst for user, inst, _ in job.results(\"out\")}\nowner"),
    (M, "## Skew\n\nNow one user produces most of the traffic. Its instance gets most of the packets, and "
        "its input buffer is the one that fills up."),
    (C, "skewed = [\"u42\" if i % 5 else users[i % 8] for i in range(2000)]\np = snb.Pipeline(\"skew\")\n"
        "p.from_iterable(skewed).key_by(lambda u: u).map(CountPerUser, name=\"count\", parallelism=4)"
        ".sink(name=\"out\")\njob = p.run(queue_maxsize=32).wait(timeout=20)\n"
        "loads = {t.name: t.packets_in for t in job.snapshot().tasks if t.operator == \"count\"}\n"
        "mean = sum(loads.values()) / len(loads)\nprint(loads, \"skew (max/mean) =\", round(max(loads.values()) "
        "/ mean, 2))"),
    exercise("Which instance owns `\"u42\"` with 7 instances instead of 4?", "partition('u42', 7)"),
    (C, "# checks\nassert all(owner[u] == partition(u, 4) for u in users)\n"
        "assert loads[f\"count[{partition('u42', 4)}]\"] == max(loads.values())\n"
        "assert max(loads.values()) / mean > 2"),
]

NOTEBOOKS["04_broadcast_and_fan_out.ipynb"] = [
    (M, "# 4. Broadcast and fan-out\n\nTwo different things:\n\n* **fan-out to several operators**: an "
        "upstream instance has one *broadcast group* per downstream operator, and every packet goes to "
        "every group (each operator sees the whole stream);\n* **broadcast strategy** inside a group: every "
        "instance of that operator gets a copy."),
    (C, "import sage_nb as snb\n\np = snb.Pipeline(\"fan-out\")\nsrc = p.from_iterable(range(10), name=\"src\")\n"
        "src.map(lambda x: x * 10, name=\"tens\", parallelism=2).sink(name=\"tens_out\")\n"
        "src.broadcast().map(lambda x: -x, name=\"neg\", parallelism=3).sink(name=\"neg_out\")\n"
        "plan = p.compile()\n[(g.index, g.target, g.strategy, len(g.connections)) for g in "
        "plan.contexts[\"src[0]\"].downstream_groups]"),
    (C, "job = p.run().wait(timeout=10)\nlen(job.results(\"tens_out\")), len(job.results(\"neg_out\"))"),
    exercise("How many packets does `neg_out` receive with `parallelism=5` on `neg`?",
             "# 10 packets x 5 instances = 50: broadcast copies every packet to every instance"),
    (C, "# checks\nassert sorted(job.results(\"tens_out\")) == [x * 10 for x in range(10)]\n"
        "assert sorted(job.results(\"neg_out\")) == sorted([-x for x in range(10)] * 3)"),
]

NOTEBOOKS["05_backpressure.ipynb"] = [
    (M, "# 5. Backpressure\n\nQueues are bounded. When a stage is slow, its input queue fills; the "
        "upstream task then blocks in `put` (it is *backpressured*) and its own input fills in turn. "
        "Nothing is dropped: the slow stage sets the pace of the whole pipeline."),
    (C, "import time\nimport sage_nb as snb\n\ndef slow(x):\n    time.sleep(0.002)\n    return x\n\n"
        "p = snb.Pipeline(\"backpressure\")\np.from_iterable(range(300), name=\"src\").map(lambda x: x, "
        "name=\"fast\").map(slow, name=\"slow\").sink(name=\"out\")\njob = p.run(queue_maxsize=8)\n"
        "job.wait(timeout=30)\nsnap = job.snapshot()\nfor t in snap.tasks:\n"
        "    q = t.queue\n    print(f\"{t.name:8} peak {q.peak if q else '-':>3}/{q.capacity if q else '-'}  "
        "blocked {t.blocked_time:.2f}s  busy {t.busy_time:.2f}s\")"),
    (M, "The bottleneck is the first stage that is busy but not blocked: `slow`. The stages before it "
        "spend their time blocked on a full queue."),
    exercise("Give `slow` parallelism 4. What happens to the blocked time of `fast`?",
             "# the slow stage now drains 4 queues; fast is blocked much less"),
    (C, "# checks\nbusy = {t.operator: t for t in snap.tasks}\nassert busy[\"slow\"].queue.peak == 8  # its queue "
        "filled up\nassert busy[\"fast\"].blocked_time > busy[\"slow\"].blocked_time\n"
        "assert sorted(job.results(\"out\")) == list(range(300))  # nothing dropped"),
]

NOTEBOOKS["06_stop_signals.ipynb"] = [
    (M, "# 6. Stop signals\n\nA bounded stream ends with a **stop signal**. Each task finishes after it has "
        "received one stop signal from **every incoming physical connection** — here a diamond with a "
        "parallel upstream — then forwards one stop signal on each of its own connections.\n\n"
        "SAGE's kernel stopped a task at its *first* stop signal (plus a short quiet period), so data from "
        "a slower parallel upstream was lost (SAGE issue #1418)."),
    (C, "import time\nimport sage_nb as snb\n\ndef slow_in_instance_2(x):\n    time.sleep(0.01 if x % 3 == 2 "
        "else 0)\n    return x\n\np = snb.Pipeline(\"stop-signals\")\nsrc = p.from_iterable(range(60), name=\"src\")\n"
        "a = src.map(slow_in_instance_2, name=\"a\", parallelism=3)\nb = src.map(lambda x: -x, name=\"b\")\n"
        "a.connect(b).co_map([lambda x: x, lambda x: x], name=\"merge\").sink(name=\"out\")\n"
        "plan = p.compile()\nplan.contexts[\"merge[0]\"].upstreams"),
    (C, "job = p.run().wait(timeout=20)\nfor t in job.snapshot().tasks:\n"
        "    print(f\"{t.name:9} stop signals {t.stops_received}/{t.stops_expected}\")"),
    exercise("How many stop signals does `out[0]` expect if `merge` has parallelism 2?",
             "# 2: one per incoming physical connection (merge[0] and merge[1])"),
    (C, "# checks\nsnap = job.snapshot()\nassert snap.task(\"merge[0]\").stops_expected == 4\n"
        "assert all(t.stops_received == t.stops_expected for t in snap.tasks)\n"
        "assert len(job.results(\"out\")) == 120  # nothing lost"),
]

NOTEBOOKS["07_services.ipynb"] = [
    (M, "# 7. Services\n\nA service is a long-lived object (a model, a cache, a database client) that many "
        "operator instances call through their context: `self.ctx.call_service(name, method, *args)`. "
        "Each service has a request queue, each caller a response queue, and replies are matched by "
        "request id."),
    (C, "import sage_nb as snb\n\nclass Prices:\n    def __init__(self):\n        self.table = {\"apple\": 3, "
        "\"pear\": 4}\n        self.calls = 0\n    def price(self, fruit):\n        self.calls += 1\n"
        "        return self.table[fruit]\n\nclass AddPrice:\n    def __call__(self, fruit):\n"
        "        return fruit, self.ctx.call_service(\"prices\", \"price\", fruit)\n\n"
        "p = snb.Pipeline(\"services\")\np.service(\"prices\", Prices)\n"
        "p.from_iterable([\"apple\", \"pear\"] * 20).map(AddPrice, name=\"enrich\", parallelism=3)"
        ".sink(name=\"out\")\njob = p.run().wait(timeout=20)\njob.results(\"out\")[:4]"),
    (M, "A service method that raises fails the caller's packet with the service named:"),
    (C, "q = snb.Pipeline(\"services-error\")\nq.service(\"prices\", Prices)\n"
        "q.from_iterable([\"kiwi\"]).map(AddPrice, name=\"enrich\").sink(name=\"out\")\ntry:\n"
        "    q.run().wait(timeout=10)\nexcept snb.JobFailed as exc:\n    print(exc)"),
    exercise("Call a service with a 1 ms timeout (`timeout=0.001`) from a slow method. What do you get?",
             "# a ServiceError: service 'prices' did not answer ... within 0.001 s"),
    (C, "# checks\nassert sorted(set(job.results(\"out\"))) == [(\"apple\", 3), (\"pear\", 4)]\n"
        "assert len(job.results(\"out\")) == 40"),
]

NOTEBOOKS["08_debugging.ipynb"] = [
    (M, "# 8. Debugging: one key breaks the pipeline\n\nA payment pipeline parses `user,amount` records, "
        "hash-partitioned by user. One user's records are malformed. First the error as the threads "
        "backend reports it — node, instance and packet — then the same run in **step mode**, where a "
        "breakpoint stops at that user's first packet so we can look around before it fails."),
    (C, "import sage_nb as snb\n\nrecords = [\"u1,5\", \"u2,7\", \"u42,x\", \"u1,3\", \"u42,4\", \"u2,1\"]\n\n"
        "def parse(line):\n    user, amount = line.split(\",\")\n    return user, int(amount)\n\n"
        "def build():\n    p = snb.Pipeline(\"debugging\")\n    p.from_iterable(records, name=\"records\")"
        ".key_by(lambda r: r.split(\",\")[0]).map(parse, name=\"parse\", parallelism=2).sink(name=\"out\")\n"
        "    return p\n\ntry:\n    build().run().wait(timeout=10)\nexcept snb.JobFailed as exc:\n"
        "    error = exc\n    print(exc)\nerror.node, error.instance, error.packet"),
    (M, "## Step mode and a breakpoint\n\n`backend=\"step\"` runs nothing until you step. A breakpoint on "
        "a packet predicate pauses *before* the packet is processed; the packet is still in its queue."),
    (C, "job = build().run(backend=\"step\")\njob.break_when(packet=lambda pkt: pkt.partition_key == \"u42\")\n"
        "job.run_to_end()\nhit = job.breakpoint_hit\nhit"),
    (C, "job.queue_contents(hit.instance)   # what waits in that instance's queue, oldest first"),
    (C, "event = job.step()                  # the next hop: parse runs on 'u42,x' and fails\nprint(event)"),
    (M, "Step mode records every event, so we can go **back** and look at the state just before:"),
    (C, "failed_at = job.position\njob.back()\nbefore = job.snapshot()\n"
        "[(t.name, t.packets_in, t.queue.used) for t in before.tasks if t.operator == \"parse\"]"),
    (C, "snb.Inspector(job)   # the graph at the current step (try the Step / Back buttons)"),
    exercise("Which instance of `parse` owns `u42`? Compute it without running the pipeline.",
             "from sage_nb.communication import partition\npartition('u42', 2)"),
    (C, "# checks\nfrom sage_nb.communication import partition\n"
        "assert error.node == \"parse\" and \"u42,x\" in str(error.packet)\n"
        "assert hit.instance == f\"parse[{partition('u42', 2)}]\"\n"
        "assert event.kind == \"error\" and \"invalid literal\" in event.error\n"
        "assert job.position == failed_at - 1"),
]

NOTEBOOKS["09_scaling_out.ipynb"] = [
    (M, "# 9. Scaling out: queues that cross processes\n\nWhen a prototype outgrows one process, its "
        "queues have to cross process boundaries. An **RPC queue** is a bounded queue held by an "
        "`RPCQueueServer` (or `sage-nb queue-server`) and reached over TCP: clients authenticate with a "
        "shared secret before the server reads anything, and the server never unpickles.\n\n"
        "When the prototype outgrows the machine, `backend=\"ray\"` runs **every instance as a Ray "
        "actor** and every queue in one queue-manager actor per job; nothing else in the pipeline "
        "changes. Both halves of this notebook check that the answers stay the same."),
    (C, "import pickle, subprocess, sys\nimport sage_nb as snb\nfrom sage_nb.communication import "
        "RPCQueueServer\n\ndef build():\n    p = snb.Pipeline(\"scale\")\n"
        "    p.from_iterable([f\"u{i % 10}\" for i in range(200)], name=\"events\").key_by(lambda u: u)"
        ".via(\"rpc\").map(lambda u: u.upper(), name=\"upper\", parallelism=3).sink(name=\"out\")\n"
        "    return p\n\nrpc_job = build().run().wait(timeout=60)   # the edge into 'upper' goes over TCP\n"
        "rpc_job.plan.contexts[\"upper[0]\"].input_qd"),
    (C, "def owners(job):\n    return {t.name: sorted(k for k, _ in t.top_keys) for t in job.snapshot().tasks "
        "if t.operator == \"upper\"}\nowners(rpc_job)"),
    (M, "## A source fed from another process\n\n`p.from_queue(descriptor)` reads a queue that a producer "
        "in another process fills; it puts items and finally `sage_nb.END`."),
    (C, "server = RPCQueueServer().start()\nfeed = server.descriptor(queue_id=\"feed\", maxsize=64)\n"
        "p = snb.Pipeline(\"fed\")\np.from_queue(feed, name=\"feed\").map(lambda x: x * x, name=\"square\")"
        ".sink(name=\"out\")\njob = p.run()\n\nproducer = (\"import pickle, sys, sage_nb as snb\\n\"\n"
        "            \"qd = pickle.loads(bytes.fromhex(sys.argv[1]))\\n\"\n"
        "            \"qd.put_many(list(range(100)))\\n\"\n            \"qd.put(snb.END)\\n\")\n"
        "subprocess.run([sys.executable, \"-c\", producer, pickle.dumps(feed).hex()], check=True, timeout=60)\n"
        "squares = job.wait(timeout=30).results(\"out\")\nserver.close()\nsquares[:5]"),
    (M, "## Before scaling out: fuse what needs no queue\n\nA queue between two operators costs a "
        "hand-over between threads for every batch. Where one operator feeds only the next, with the same "
        "parallelism and no key or broadcast in between, `chain=True` runs them **in one task**: "
        "instance *i* of the second inside the thread of instance *i* of the first. The graph, the "
        "counters and the answers stay the same; the edge is labelled *chained*."),
    (C, "import time\n\ndef build_chain():\n    p = snb.Pipeline(\"chain\")\n"
        "    p.from_iterable(range(300_000), name=\"numbers\").map(lambda x: x * 3, name=\"triple\")"
        ".filter(lambda x: x % 2 == 0, name=\"even\").sink(name=\"out\")\n    return p\n\n"
        "timings = {}\nfor chain in (False, True):\n    start = time.perf_counter()\n"
        "    fused_job = build_chain().run(chain=chain).wait(timeout=60)\n"
        "    timings[chain] = time.perf_counter() - start\n"
        "    print(f\"chain={chain}: {len(fused_job.results('out')):,} results in {timings[chain]:.2f} s, \"\n"
        "          f\"{len(fused_job.runner.backend.threads)} threads\")\n"
        "snb.Inspector(fused_job)   # four nodes, three 'chained' edges"),
    (M, "## The same pipeline on Ray\n\n`backend=\"ray\"` starts a local Ray (no dashboard) or joins "
        "the one this notebook already runs, creates one actor per task instance and one "
        "`RayQueueManager` actor holding the job's queues, and moves packets between them **in batches** "
        "(one actor call carries many packets; routing stays per packet). The inspector reads the job "
        "exactly as on threads. When the job ends its actors are gone."),
    (C, "def build_local():\n    p = snb.Pipeline(\"scale-ray\")\n"
        "    p.from_iterable([f\"u{i % 10}\" for i in range(200)], name=\"events\").key_by(lambda u: u)"
        ".map(lambda u: u.upper(), name=\"upper\", parallelism=3).sink(name=\"out\")\n"
        "    return p\n\nray_job = build_local().run(backend=\"ray\")\nsnb.Inspector(ray_job)"),
    (C, "ray_job.wait(timeout=240)\nprint(ray_job.status, len(ray_job.results(\"out\")), \"results\")\n"
        "owners(ray_job)"),
    (C, "from sage_nb.runtime.ray_backend import alive_actors\n"
        "[name for name in alive_actors() if ray_job.runner.job in name]   # its actors and queue manager: gone"),
    exercise("Add `.key_by(lambda x: x % 10)` before `filter` in `build_chain()`. Which edges stay chained?",
             "from sage_nb.compiler import chain_edges\nchain_edges(build_chain().graph)\n"
             "# only numbers -> triple: a hash edge goes through a queue, to the instance that owns the key"),
    exercise("Run `build()` without `.via(\"rpc\")`. Do the key → instance tables differ?",
             "# no: the hash is stable across processes and transports, so the same key meets the same instance"),
    (C, "# checks\nthreads_job = snb.Pipeline(\"scale-local\")\n"
        "threads_job.from_iterable([f\"u{i % 10}\" for i in range(200)]).key_by(lambda u: u)"
        ".map(lambda u: u.upper(), name=\"upper\", parallelism=3).sink(name=\"out\")\n"
        "threads_job = threads_job.run().wait(timeout=30)\n"
        "assert sorted(rpc_job.results(\"out\")) == sorted(threads_job.results(\"out\"))\n"
        "assert owners(rpc_job) == owners(threads_job)   # same key -> instance map\n"
        "assert squares == [x * x for x in range(100)]\n"
        "assert sorted(ray_job.results(\"out\")) == sorted(threads_job.results(\"out\"))\n"
        "assert owners(ray_job) == owners(threads_job)   # Ray workers hash keys the same way\n"
        "assert ray_job.backend == \"ray\" and not [n for n in alive_actors() if ray_job.runner.job in n]\n"
        "assert fused_job.results(\"out\") == [x * 3 for x in range(300_000) if x * 3 % 2 == 0]\n"
        "assert {c.strategy for c in fused_job.snapshot().connections} == {\"chained\"}\n"
        "assert [t.packets_in for t in fused_job.snapshot().tasks] == [300_000, 300_000, 300_000, 150_000]"),
]


def main() -> int:
    HERE.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=[new_markdown_cell(s) if k == M else new_code_cell(s) for k, s in cells])
        for i, cell in enumerate(nb.cells):  # stable ids: regenerating changes nothing
            cell.id = f"c{i:02d}"
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

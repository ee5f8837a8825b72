"""The README's first command: `sage-nb demo` runs a real pipeline and prints what it routed."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import sage_nb as snb
from sage_nb.cli import main
from sage_nb.communication import partition
from sage_nb.demo import demo_pipeline, report


def test_demo_pipeline_counts_every_word_and_reports_routing():
    job = demo_pipeline("demo-test").run(queue_maxsize=16).wait(timeout=60)
    text = report(job.snapshot())
    assert "FINISHED" in text
    assert "split[0] -> count[1]" in text and "hash" in text and "broadcast" in text
    words = [w for line in __import__("sage_nb.demo", fromlist=["TEXT"]).TEXT for w in line.split()]
    out = job.results("out")
    assert len(out) == len(words)
    assert len(job.results("stats")) == 2 * len(words)  # broadcast to 2 instances
    # keyed state: the final count of each word equals its frequency
    final = {}
    for word, n in out:
        final[word] = max(final.get(word, 0), n)
    assert final == {w: words.count(w) for w in set(words)}
    # the key -> instance table agrees with the stable partition function
    snap = job.snapshot()
    for t in snap.tasks:
        if t.operator == "count":
            for key, _ in t.top_keys:
                assert partition(eval(key), 3) == t.parallel_index


def test_sage_nb_demo_command_prints_the_table_and_writes_the_report(tmp_path):
    html = tmp_path / "report.html"
    out = subprocess.run([sys.executable, "-m", "sage_nb.cli", "demo", "--html", str(html)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "connection" in out and "peak load" in out and "key -> instance" in out
    assert "what if 'count' had another parallelism" in out and "  6 instances: packets [" in out
    assert f"HTML report (graph, routing log, key distribution, timeline): {html}" in out
    page = html.read_text()
    assert "split[0]" in page and "FINISHED" in page
    # self-contained: no link out (inline images are base64, which may spell "http" by chance)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page).lower().replace("http-equiv", "")
    assert "http" not in text
    assert snb.jobs() == []


def test_the_python_blocks_of_readme_run(no_leak):
    """A newcomer copies them into a notebook: each block runs as written."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    for block in blocks:
        scope: dict = {}
        exec(compile(block, "README.md", "exec"), scope)  # our own README
        job = scope.get("job")
        if job is not None:
            job.wait(timeout=60)
            assert job.status is snb.JobStatus.FINISHED, job


@pytest.mark.parametrize(("value", "said"), [("-3", "must be 1 or more, got -3"), ("x", "must be a whole number, got 'x'")])
def test_a_bad_queue_size_gets_a_usage_error_not_a_traceback(value, said, capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--queue-maxsize", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --queue-maxsize: {said}" in err and "Traceback" not in err

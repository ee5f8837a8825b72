"""``make bench`` keeps working: a tiny run prints every row, and ratios pair the rates of one turn."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import run as bench


def test_a_ratio_pairs_the_rates_measured_in_the_same_repetition():
    # turn 2 ran on a machine twice as busy for both cases: paired, the drift cancels
    assert bench.ratio([2.0, 1.0, 2.0], [4.0, 2.0, 4.0]) == 0.5
    # a ratio of medians would read 3/4 here; the median of the turns' ratios is 1
    assert bench.ratio([1.0, 3.0, 5.0], [1.0, 3.0, 9.0]) == 1.0
    with pytest.raises(ValueError):
        bench.ratio([1.0, 2.0], [1.0])


@pytest.mark.slow
def test_a_small_bench_run_prints_every_row_of_the_table(capsys):
    assert bench.main(["--n", "3000", "--reps", "1", "--memory-n", "30000"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    names = [line.split("|")[1].strip() for line in table[1:]]
    assert names[:11] == [
        "raw 3-stage queue.Queue(10000) threads", "raw fused loop", "raw 3-stage threads, lists of 256",
        "sage_nb threads batch_size=1", "sage_nb threads default", "sage_nb threads default, generator source",
        "sage_nb threads default chain=True", "sage_nb threads default chain=True, generator source",
        "sage_nb threads default map p=1 hash", "sage_nb threads default map p=4 hash",
        "sage_nb threads default under the Inspector"]
    assert names[11:14] == ["raw fused word count (words/s)", "sage_nb threads default word count p=1",
                            "sage_nb threads default word count p=4"]
    assert names[-3:] == ["latency p50, raw two thread hops", "latency p50, sage_nb batch_size=1",
                          "latency p50, sage_nb default"]
    assert "memory over 30,000 packets" in out and "Inspector updater:" in out


@pytest.mark.ray
def test_the_ray_bench_pipelines_run_and_deliver_every_packet(ray_session):
    """bench_ray.py's two sage_nb pipelines (it asserts every packet arrived) on the shared cluster."""
    import bench_ray

    rate, startup = bench_ray.pipeline_rate(3000)
    assert rate > 0 and startup >= 0
    assert bench_ray.memory_rate(3000) > 0
    hops = bench_ray.queue_two_hops(ray_session, 8, 0.0)  # Ray's own queue path, the latency reference
    assert len(hops) == 3 and all(h > 0 for h in hops)

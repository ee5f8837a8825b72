"""The ``sage-nb`` command: ``sage-nb demo`` runs the demo job; ``sage-nb queue-server`` serves RPC queues."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .demo import demo_pipeline, report
    from .inspector import Inspector

    job = demo_pipeline().run(queue_maxsize=args.queue_maxsize)
    inspector = Inspector(job)  # records the load history for the report's timeline
    job.wait(timeout=120)
    print(report(job.snapshot()))
    now = len(job.plan.instances("count"))
    print(f"\nwhat if 'count' had another parallelism (this run's keys spread again, as key_by would; "
          f"it has {now}):")
    for n in (2, 6):
        s = job.what_if("count", n)
        print(f"  {n} instances: packets {list(s.packets)}, skew {s.skew:.2f} (max / mean)")
    if args.html:
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        path = inspector.save_html(Path(args.html))
        print(f"\nHTML report (graph, routing log, key distribution, timeline): {path.resolve()}")
    inspector.close()
    return 0


def _capacity(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {n}")
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sage-nb", description="sage-nb demo runs the demo job and "
                                     "prints its routing; sage-nb queue-server serves RPC queues.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the demo word count on threads and print its routing")
    demo.add_argument("--queue-maxsize", type=_capacity, default=16,
                      help="input queue capacity in packets, 1 or more (default 16)")
    demo.add_argument("--html", default="build/demo-report.html",
                      help="where to write the HTML report (default build/demo-report.html; '' for none)")
    demo.set_defaults(func=_demo)
    sub.add_parser("queue-server", help="serve named bounded queues over TCP "
                                        "(sage-nb queue-server --help)")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["queue-server"]:
        from .communication.rpc_queue import serve_main
        return serve_main(argv[1:])
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

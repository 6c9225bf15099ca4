"""Side-by-side benchmarks of the control plane and its peer, etcd.

Run with ``python -m benchmarks`` (``make bench``); ``--quick`` for a smoke
run, ``--only NAME`` for one benchmark. Never part of the test suite.

Every system under test runs as its own process on 127.0.0.1, and every load
generator (registering clients, watchers, the writer, the snapshot reader) in
processes of its own, so the figures are those of real separate processes
sharing the machine's cores. See ``docs/benchmarks.md``.
"""

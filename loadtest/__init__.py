"""Load scenarios (locust) and the one-command benchmark (``make bench``).

Everything here talks to the server over HTTP only, except the in-shard
decide microbenchmark (:mod:`loadtest.microbench`), which calls
:mod:`models` directly, in-process, to show what one decision costs without
Ray or HTTP around it.
"""

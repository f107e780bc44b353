"""`make bench`: how fast Lotgate answers, records and decides, on this machine.

Run it with `python -m tests.bench` (PostgreSQL when DATABASE_URL is set, else SQLite
files). It starts nats-server and the three services as processes, a bare grpc.aio echo
server as a yardstick (tests/bench/echo.py), drives them from this process over gRPC
(tests/bench/phases.py, with the load primitives in tests/bench/load.py) and prints a
markdown table, which it also writes to bench-results/latest.md.
"""

"""Crash points: let a test kill a service at an exact place in its code, like a power cut.

Off unless LOTGATE_CRASH_AT is set (never in production). Its value is one or more
`point` or `point:n` (comma-separated): the process sends itself SIGKILL the n-th time
(default: the first) execution reaches `point`. Nothing is flushed, no handler runs, no
transaction is rolled back politely: the database and the broker see a vanished process,
which is what the recovery paths (outbox, inbox, redelivery) must survive.

The points:
- `after_commit_before_ack`: a unit of work has committed; neither the gRPC reply nor the
  JetStream ack for it has been sent.
- `after_publish_before_outbox_delete`: the relay has published rows (the broker acked
  them) but has not deleted them from the outbox.
- `inside_decision`: the lots service has decided lots in a transaction that is not
  committed yet.
"""

from __future__ import annotations

import os
import signal

ENV = "LOTGATE_CRASH_AT"
POINTS = frozenset({"after_commit_before_ack", "after_publish_before_outbox_delete",
                    "inside_decision"})


def _parse(value: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        point, _, count = part.partition(":")
        if point not in POINTS:
            raise ValueError(f"{ENV}: unknown crash point {point!r}; known: {sorted(POINTS)}")
        armed[point] = int(count or 1)
    return armed


_armed: dict[str, int] = _parse(os.environ.get(ENV, ""))


def crash_point(point: str) -> None:
    """Kill this process (SIGKILL) when `point` is armed and reached for the n-th time."""
    if not _armed or point not in _armed:
        return
    _armed[point] -= 1
    if _armed[point] <= 0:
        os.write(2, f"crash point {point} reached: SIGKILL\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)

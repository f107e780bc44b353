"""Reading a service's metrics endpoint over HTTP, as Prometheus does."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# Never through a proxy from the environment: the endpoints are on loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


async def get(port: int, path: str) -> tuple[int, str]:
    """The HTTP status and body of GET http://127.0.0.1:<port><path>."""

    def fetch() -> tuple[int, str]:
        try:
            with _OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return await asyncio.to_thread(fetch)


@dataclass(frozen=True)
class Scrape:
    """The samples of one scrape: (name, labels, value)."""

    samples: tuple[tuple[str, dict[str, str], float], ...]

    def value(self, name: str, **labels: str) -> float | None:
        """The sum of the samples named `name` whose labels include `labels`; None when
        there is no such sample."""
        found = [value for sample, sample_labels, value in self.samples
                 if sample == name and labels.items() <= sample_labels.items()]
        return sum(found) if found else None

    def names(self) -> set[str]:
        return {name for name, _, _ in self.samples}


async def scrape(port: int) -> Scrape:
    status, body = await get(port, "/metrics")
    assert status == 200, f"/metrics answered {status}: {body[:500]}"
    return Scrape(tuple((s.name, dict(s.labels), s.value)
                        for family in text_string_to_metric_families(body)
                        for s in family.samples))

"""Reading the roles' /metrics pages back: what the bench, `logpipe up` and the tests measure.

The roles only serve their metrics (`logpipe.obs.metrics`); parsing the Prometheus text they
serve is the measuring side's business.
"""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, dict[str, str], float]


async def scrape(session: aiohttp.ClientSession, url: str) -> list[Sample]:
    """Every sample of a /metrics page as (name, labels, value)."""
    async with session.get(url) as resp:
        text = await resp.text()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    return sum(
        value
        for sample_name, sample_labels, value in samples
        if sample_name == name and labels.items() <= sample_labels.items()
    )


def buckets(samples: list[Sample], histogram: str) -> list[tuple[float, float]]:
    """A histogram's cumulative buckets, summed over its other labels."""
    counts: dict[float, float] = {}
    for name, labels, value in samples:
        if name == f"{histogram}_bucket":
            bound = float(labels["le"])
            counts[bound] = counts.get(bound, 0.0) + value
    return sorted(counts.items())

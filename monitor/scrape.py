"""Scrapes services' own Prometheus /metrics and relabels every sample with service and job_id."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from aifb.mesh.discovery import Target
from aifb.monitor.model import COUNTER, GAUGE, MetricSet, Sample

__all__ = ["Scraper", "parse_exposition"]

log = logging.getLogger(__name__)

_COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")


def _sample_type(family_type: str, sample_name: str) -> int:
    if family_type == "counter":
        return COUNTER if not sample_name.endswith("_created") else GAUGE
    if family_type in ("histogram", "summary") and sample_name.endswith(_COUNTER_SUFFIXES):
        return COUNTER
    return GAUGE


def parse_exposition(text: str, extra: Mapping[str, str], *,
                     max_samples: int = 100_000) -> list[Sample]:
    """Parse the text format; add `extra` labels, renaming clashing ones to exported_<name>."""
    from prometheus_client.parser import text_string_to_metric_families  # 11 MB: only if used

    out: list[Sample] = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_created") or math.isnan(s.value):
                continue
            labels = dict(s.labels)
            for key, value in extra.items():
                if key in labels:
                    labels[f"exported_{key}"] = labels.pop(key)
                labels[key] = value
            ts = None if s.timestamp is None else int(float(s.timestamp) * 1000)
            out.append(Sample(s.name, tuple(sorted(labels.items())), float(s.value),
                              _sample_type(family.type, s.name), family.documentation, ts))
            if len(out) >= max_samples:
                log.warning("scrape truncated at %d samples", max_samples)
                return out
    return out


class Scraper:
    """Scrapes every target with a metrics URL concurrently, within `timeout` seconds each.

    Uses the standard library's HTTP client in a small thread pool: httpx would add about
    15 MB to an agent that must stay small.
    """

    def __init__(self, timeout: float = 3.0, *, max_bytes: int = 32 * 1024 * 1024,
                 headers: Mapping[str, str] | None = None, workers: int = 4) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._headers = dict(headers or {})
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def scrape_all(self, targets: Mapping[str, Target], out: MetricSet) -> None:
        wanted = [t for t in targets.values() if t.metrics_url]
        if not wanted:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="scrape")
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(self._pool, self.scrape, t)
                                         for t in wanted))
        for samples in results:
            out.extend(samples)

    def _fetch(self, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {url}")
        request = urllib.request.Request(url, headers={
            "Accept": "text/plain;version=0.0.4", **self._headers})
        with self._opener.open(request, timeout=self.timeout) as response:
            body: bytes = response.read(self.max_bytes + 1)
            charset = response.headers.get_content_charset() or "utf-8"
        if len(body) > self.max_bytes:
            raise ValueError(f"body over {self.max_bytes} bytes")
        return body.decode(charset, errors="replace")

    def scrape(self, target: Target) -> list[Sample]:
        """One target's samples plus aifb_scrape_up / _duration_seconds / _samples."""
        labels = {"service": target.service, "job_id": target.job_id}
        started = time.perf_counter()
        samples: list[Sample] = []
        up = 0.0
        try:
            samples = parse_exposition(self._fetch(target.metrics_url), labels)
            up = 1.0
        except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
            log.debug("scrape of %s failed: %s", target.metrics_url, exc)
        extra = MetricSet()
        extra.add("aifb_scrape_up", up, labels, help="1 if the last scrape of the service's "
                  "/metrics succeeded, else 0.")
        extra.add("aifb_scrape_duration_seconds", time.perf_counter() - started, labels,
                  help="How long the scrape took.")
        extra.add("aifb_scrape_samples", len(samples), labels, help="Samples the scrape returned.")
        return samples + extra.samples

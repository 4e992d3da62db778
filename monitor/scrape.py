"""Scrapes services' own Prometheus /metrics and relabels every sample with service and job_id."""

from __future__ import annotations

import asyncio
import logging
import math
import re
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


# One sample line of the text format: name, optional {labels}, value, optional ms timestamp.
_SAMPLE_LINE = re.compile(
    r"([a-zA-Z_:][a-zA-Z0-9_:]*)[ \t]*(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+(-?[0-9]+))?[ \t]*")
_LABEL_PAIR = re.compile(
    r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\]|\\.)*)"[ \t]*(?:,|$)')
_UNESCAPE = re.compile(r"\\(.)")
_ESCAPED = {"n": "\n", "\\": "\\", '"': '"'}
# The sample-name suffixes each declared type owns (a histogram `x` has `x_bucket`, ...).
_SUFFIXES = {"counter": ("_total", "_created"),
             "histogram": ("_bucket", "_count", "_sum", "_created", "_gcount", "_gsum"),
             "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
             "summary": ("_count", "_sum", "_created")}


def _labels(body: str, line: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    body = body.rstrip(" \t,")
    while pos < len(body):
        match = _LABEL_PAIR.match(body, pos)
        if match is None:
            raise ValueError(f"bad labels in exposition line {line[:200]!r}")
        value = match.group(2)
        if "\\" in value:
            value = _UNESCAPE.sub(lambda m: _ESCAPED.get(m.group(1), "\\" + m.group(1)), value)
        out[match.group(1)] = value
        pos = match.end()
    return out


def _family(name: str, types: Mapping[str, str]) -> str:
    """The declared family a sample name belongs to (itself when none claims it)."""
    if name in types:
        return name
    for suffix in ("_total", "_bucket", "_count", "_sum", "_created", "_gcount", "_gsum"):
        if name.endswith(suffix):
            base = name[:-len(suffix)]
            if suffix in _SUFFIXES.get(types.get(base, ""), ()):
                return base
    return name


def parse_exposition(text: str, extra: Mapping[str, str], *,
                     max_samples: int = 100_000) -> list[Sample]:
    """Parse the Prometheus text format; add `extra` labels, renaming clashing ones to
    exported_<name>. (Our own small parser: prometheus_client's costs about 11 MB of memory
    and several times the CPU, in an agent that must stay small.)"""
    out: list[Sample] = []
    types: dict[str, str] = {}
    helps: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line[0] == "#":
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] == "TYPE":
                types[parts[2]] = parts[3].strip() if len(parts) > 3 else "untyped"
            elif len(parts) >= 3 and parts[1] == "HELP":
                doc = parts[3] if len(parts) > 3 else ""
                helps[parts[2]] = doc.replace("\\n", "\n").replace("\\\\", "\\")
            continue
        match = _SAMPLE_LINE.fullmatch(line)
        if match is None:
            raise ValueError(f"bad exposition line {line[:200]!r}")
        name, body, value_text, stamp = match.groups()
        if name.endswith("_created"):
            continue
        value = float(value_text)
        if math.isnan(value):
            continue
        labels = _labels(body, line) if body else {}
        for key, val in extra.items():
            if key in labels:
                labels[f"exported_{key}"] = labels.pop(key)
            labels[key] = val
        family = _family(name, types)
        out.append(Sample(name, tuple(sorted(labels.items())), value,
                          _sample_type(types.get(family, "unknown"), name),
                          helps.get(family, ""), None if stamp is None else int(stamp)))
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

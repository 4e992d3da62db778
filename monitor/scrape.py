"""Scrapes services' own Prometheus /metrics and relabels every sample with service and job_id."""

from __future__ import annotations

import asyncio
import http.client
import logging
import math
import re
import time
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from aifb.mesh.discovery import Target
from aifb.monitor.model import COUNTER, GAUGE, MetricSet, Sample

__all__ = ["ParseCache", "Scraper", "parse_exposition"]

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


class ParseCache:
    """What `parse_exposition` learnt of each series line of one target (the part before the
    value: name and labels, relabelled, with its type and help), valid while the target's
    `# TYPE` / `# HELP` lines stay the same. A scrape then parses only the values."""

    def __init__(self, max_series: int = 100_000) -> None:
        self.meta: list[str] | None = None
        self.series: dict[str, tuple[str, tuple[tuple[str, str], ...], int, str] | None] = {}
        self.max_series = max_series


def _series_key(line: str) -> tuple[str, list[str]]:
    """A sample line's series part (name and labels, as written) and the fields after it."""
    close = line.rfind("}")
    if close >= 0:
        return line[:close + 1], line[close + 1:].split()
    name, _, rest = line.partition(" ")
    if "\t" in name:
        name, _, more = name.partition("\t")
        rest = more + " " + rest
    return name, rest.split()


def parse_exposition(text: str, extra: Mapping[str, str], *, max_samples: int = 100_000,
                     cache: ParseCache | None = None) -> list[Sample]:
    """Parse the Prometheus text format; add `extra` labels, renaming clashing ones to
    exported_<name>. (Our own small parser: prometheus_client's costs about 11 MB of memory
    and several times the CPU, in an agent that must stay small.) With a `cache` kept for
    one target (and the same `extra`), lines seen before cost a dict lookup and a float."""
    lines = text.splitlines()
    if cache is not None:
        meta = [line for line in lines if line[:1] == "#"]
        if meta != cache.meta or len(cache.series) > cache.max_series:
            cache.meta, cache.series = meta, {}
    out: list[Sample] = []
    types: dict[str, str] = {}
    helps: dict[str, str] = {}
    for raw in lines:
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
        if cache is not None:
            key, rest = _series_key(line)
            if key in cache.series and (known := cache.series[key]) is None:
                continue  # a _created sample: skipped
            if key in cache.series and known is not None and 1 <= len(rest) <= 2 and (
                    len(rest) == 1 or rest[1].lstrip("-").isdigit()):
                value = float(rest[0])
                if not math.isnan(value):
                    k_name, k_labels, k_type, k_help = known
                    out.append(Sample(k_name, k_labels, value, k_type, k_help,
                                      None if len(rest) == 1 else int(rest[1])))
                    if len(out) >= max_samples:
                        log.warning("scrape truncated at %d samples", max_samples)
                        return out
                continue
        match = _SAMPLE_LINE.fullmatch(line)
        if match is None:
            raise ValueError(f"bad exposition line {line[:200]!r}")
        name, body, value_text, stamp = match.groups()
        if name.endswith("_created"):
            if cache is not None:
                cache.series[_series_key(line)[0]] = None
            continue
        value = float(value_text)
        labels = _labels(body, line) if body else {}
        for key_, val in extra.items():
            if key_ in labels:
                labels[f"exported_{key_}"] = labels.pop(key_)
            labels[key_] = val
        family = _family(name, types)
        sample = Sample(name, tuple(sorted(labels.items())), value,
                        _sample_type(types.get(family, "unknown"), name),
                        helps.get(family, ""), None if stamp is None else int(stamp))
        if cache is not None:
            cache.series[_series_key(line)[0]] = (sample.name, sample.labels, sample.type,
                                                  sample.help)
        if math.isnan(value):
            continue
        out.append(sample)
        if len(out) >= max_samples:
            log.warning("scrape truncated at %d samples", max_samples)
            return out
    return out


class Scraper:
    """Scrapes every target with a metrics URL concurrently, within `timeout` seconds each.

    Uses the standard library's HTTP client in a small thread pool (httpx would add about
    15 MB to an agent that must stay small), with one kept-alive connection and one
    `ParseCache` per target URL.
    """

    def __init__(self, timeout: float = 3.0, *, max_bytes: int = 32 * 1024 * 1024,
                 headers: Mapping[str, str] | None = None, workers: int = 4) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._headers = {"Accept": "text/plain;version=0.0.4", **(headers or {})}
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        # Per target URL; a scrape takes its connection out while it uses it.
        self._conns: dict[str, http.client.HTTPConnection] = {}
        self._caches: dict[tuple[str, str, str], ParseCache] = {}

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        for conn in list(self._conns.values()):
            conn.close()
        self._conns.clear()

    async def scrape_all(self, targets: Mapping[str, Target], out: MetricSet) -> None:
        wanted = [t for t in targets.values() if t.metrics_url]
        urls = {t.metrics_url for t in wanted}
        for url in [u for u in self._conns if u not in urls]:
            self._conns.pop(url).close()
        keys = {(t.metrics_url, t.service, t.job_id) for t in wanted}
        for key in [k for k in self._caches if k not in keys]:
            del self._caches[key]
        if not wanted:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(min(self._workers, len(wanted)),
                                            thread_name_prefix="scrape")
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(self._pool, self.scrape, t)
                                         for t in wanted))
        for samples in results:
            out.extend(samples)

    def _fetch(self, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn = self._conns.pop(url, None)
        reused = conn is not None
        while True:
            if conn is None:
                kind = (http.client.HTTPSConnection if parts.scheme == "https"
                        else http.client.HTTPConnection)
                conn = kind(parts.hostname, parts.port, timeout=self.timeout)
            try:
                conn.request("GET", path, headers=self._headers)
                response = conn.getresponse()
                body: bytes = response.read(self.max_bytes + 1)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused:  # the server closed a kept-alive connection: once more, fresh
                    conn, reused = None, False
                    continue
                raise OSError(f"GET {url}: {exc!r}") from exc
            break
        if 300 <= response.status < 400:  # a redirect: let urllib follow it
            conn.close()
            return self._fetch_following(url)
        if response.status >= 400:
            conn.close()
            raise OSError(f"GET {url}: HTTP {response.status}")
        if len(body) > self.max_bytes:
            conn.close()
            raise ValueError(f"body over {self.max_bytes} bytes")
        if response.will_close:
            conn.close()
        else:
            self._conns[url] = conn
        charset = response.headers.get_content_charset() or "utf-8"
        return body.decode(charset, errors="replace")

    def _fetch_following(self, url: str) -> str:
        request = urllib.request.Request(url, headers=self._headers)
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
        key = (target.metrics_url, target.service, target.job_id)
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches[key] = ParseCache()
        try:
            samples = parse_exposition(self._fetch(target.metrics_url), labels, cache=cache)
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

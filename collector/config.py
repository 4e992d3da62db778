"""The collector's typed configuration: forwarding targets, queue sizes, limits, time policy."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aifb.mesh.config import Section

__all__ = ["CollectorConfig", "RetryConfig"]


class RetryConfig(Section):
    """Jittered exponential backoff for 429, retryable 5xx and connection errors."""

    initial_seconds: float = Field(default=0.2, gt=0)
    max_seconds: float = Field(default=5.0, gt=0)
    multiplier: float = Field(default=2.0, ge=1)
    # A request retried this long is logged as an error (once); retries go on, and what it
    # carries stays unacknowledged (agents hold back) until the target takes it.
    max_elapsed_seconds: float = Field(default=300.0, gt=0)


class CollectorConfig(Section):
    """Everything `start_collector` needs. Empty URLs mean "keep locally, forward nowhere"."""

    # Prometheus remote-write endpoint, e.g. http://127.0.0.1:9090/api/v1/write.
    remote_write_url: str = ""
    remote_write_timeout_seconds: float = Field(default=10.0, gt=0)
    # Samples per remote-write request; queued batches are merged up to this many.
    remote_write_max_samples: int = Field(default=50_000, ge=1)
    # Parallel forwarders; each agent's batches always go through the same one, in order.
    forward_workers: int = Field(default=2, ge=1, le=64)
    # Loki base URL, e.g. http://127.0.0.1:3100 (the push path is appended).
    loki_url: str = ""
    loki_format: Literal["protobuf", "json"] = "protobuf"
    loki_gzip: bool = False
    loki_timeout_seconds: float = Field(default=10.0, gt=0)
    # A Loki push goes out when this many bytes of lines are buffered, or after batch_wait.
    loki_batch_bytes: int = Field(default=1 << 20, ge=1)
    loki_batch_wait_seconds: float = Field(default=1.0, gt=0)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    # Bounded queue between ingest and forwarding, in batches (all workers together).
    queue_max_batches: int = Field(default=256, ge=1)
    # How long a push waits for queue room before the agent gets RESOURCE_EXHAUSTED.
    enqueue_timeout_seconds: float = Field(default=30.0, gt=0)
    # Per-batch limits (label explosion guard); above them the batch is INVALID_ARGUMENT.
    max_series_per_batch: int = Field(default=20_000, ge=1)
    max_labels_per_series: int = Field(default=64, ge=1)
    max_samples_per_batch: int = Field(default=1_000_000, ge=1)
    max_label_value_bytes: int = Field(default=2048, ge=1)
    max_streams_per_batch: int = Field(default=10_000, ge=1)
    max_lines_per_batch: int = Field(default=1_000_000, ge=1)
    max_line_bytes: int = Field(default=256 * 1024, ge=1)
    # Samples more than this far in the future are clamped to "now" or rejected.
    future_skew_seconds: float = Field(default=300.0, ge=0)
    future_policy: Literal["reject", "clamp"] = "reject"
    # Samples older than this are rejected (Prometheus says "out of bounds" after about 1 h).
    max_sample_age_seconds: float = Field(default=3600.0, gt=0)
    # Log entries older than this are rejected (Loki's default is about a week).
    max_log_age_seconds: float = Field(default=7 * 24 * 3600.0, gt=0)
    # Per-agent sequence numbers remembered for duplicate detection.
    dedup_window: int = Field(default=4096, ge=1)
    # Local stores: /metrics, QueryLogs and GetTrace read them.
    latest_max_series: int = Field(default=200_000, ge=0)
    log_store_max_lines: int = Field(default=100_000, ge=0)
    trace_store_max_spans: int = Field(default=100_000, ge=0)
    # The HTTP endpoint serving /metrics; empty: none. Port 0 picks a free one.
    metrics_listen: str = "127.0.0.1:9100"
    # How long stop() waits for accepted telemetry to be forwarded (what is still not
    # forwarded then is not acknowledged: its agents resend it to the next collector).
    drain_seconds: float = Field(default=10.0, ge=0)

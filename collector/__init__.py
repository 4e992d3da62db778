"""The collector: agents' telemetry in over gRPC; Prometheus remote write, Loki, /metrics out."""

from __future__ import annotations

from aifb.collector.app import CollectorApp, start_collector
from aifb.collector.config import CollectorConfig, RetryConfig

__all__ = ["CollectorApp", "CollectorConfig", "RetryConfig", "start_collector"]

"""Benchmark reports: one document with every figure, rendered as JSON, Parquet, HTML, Markdown."""

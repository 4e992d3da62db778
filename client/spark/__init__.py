"""Spark scale-out of the load engine: splitting a LoadSpec, the executor task, sessions, Parquet.

The driver entry point is `aifb.client.spark_engine.run_spark_load`; this package holds its parts,
none of which needs a JVM except `session` and `executor` (which import pyspark lazily).
"""

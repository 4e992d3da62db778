"""One LoadSpec on N partitions, merged exactly: in local worker processes (`processes`, the
`--workers` option) or on Spark executors (`spark`, with its session in `spark_session`).

Both engines share the parts: `split` divides the spec, `partition` runs one share of it (the same
in-process engine as `aifb bench run`), `hub` carries live progress and cancel between partitions
and the driver, and `shared` lets a workload run its setup once instead of once per partition.
Only `spark` and `spark_session` need pyspark (imported lazily)."""

"""The benchmark client, by part:

- `engine/`: the load engine (spec, pacing, recording, results, sweeps);
- `workloads/`: what the engine sends (`http`, `openai-*`, `vectordb`) and the workload registry;
- `scaleout/`: the same engine on N partitions, in worker processes or on Spark;
- `report/`: HTML reports, charts, comparisons and Parquet files;
- `service/`: the BenchmarkService (gRPC): options, runs, their store and telemetry.

The fake OpenAI server the `fake-llm` recipe runs lives with that recipe (`aifb.recipes.fake_llm`).
"""

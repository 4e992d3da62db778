"""What a benchmark run is, apart from how it is served: its options (`options`: load, SLOs,
error budget, engine; validated once, for the CLI and the BenchmarkService alike, and turned into
the engine's plan) and its record (`record`: owner, target, state, times, last progress)."""

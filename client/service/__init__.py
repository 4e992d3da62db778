"""The BenchmarkService: runs load in this process (or on Spark), persists and reports runs."""

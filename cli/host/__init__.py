"""The composition layer: `aifb up`, `aifb demo` and the threaded test hosts built from the
components, wired over loopback gRPC exactly as separate processes would be.

Components (server, client, collector, monitor, logger) never import one another, and the
mesh imports none of them (tests/contract/test_imports.py); this package, and the `cli`
commands that use it, are where they meet:

- `telemetry`: the collector, a monitor and a logger agent beside ServerService (`aifb up`);
- `bench`: the BenchmarkService beside ServerService, resolving services through ServerService
  over loopback gRPC (as `aifb bench serve` does over the network);
- `loopback`: the address and credentials a process uses to call its own port;
- `threaded`: the server, the BenchmarkService and optionally the collector on a background
  event loop (`aifb demo`, tests, benchmarks).
"""

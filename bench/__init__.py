"""foldflow's benchmarks (run from the project root: python -m bench.throughput)."""

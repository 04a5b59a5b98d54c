"""foldflow's benchmarks, peers side by side: `python -m bench run [--quick]` (see README, "Benchmarks")."""

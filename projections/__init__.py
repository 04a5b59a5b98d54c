"""foldflow's read side: projection workers and the read models they keep (execution history, listings, correlation lookup)."""

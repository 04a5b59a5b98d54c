"""What every worker role shares: the consume loop, startup, preflight, lifecycle, health, metrics."""

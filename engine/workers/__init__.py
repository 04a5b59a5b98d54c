"""The worker roles: engine, router, relay, timers, activities."""

"""The store tests of per-service limits (tests/unit/test_limits.py) on a real
redis-server too: limits.lua's TIME, float tokens and ZSET expiry as Redis runs them."""

from __future__ import annotations

from tests.unit.test_limits import (  # noqa: F401  (collected here with the real-and-fake cluster_backend)
    test_a_dead_workers_permits_lapse_after_their_lease_and_renewal_keeps_them,
    test_both_limits_a_task_waiting_for_a_permit_takes_no_token,
    test_config_put_get_remove_bumps_the_version,
    test_in_flight_permits_are_counted_per_task_and_idempotent,
    test_token_bucket_refills_continuously_up_to_its_capacity,
    test_waiting_entries_keep_their_since_and_stale_ones_are_dropped,
)

"""Plumbing shared by the test tiers (the fixtures stay in tests/conftest.py).

- ``tools``: paths, ``require_tool``/``require_redis_server`` (skip locally, fail under CI),
  ``foldflow_env`` (the one environment builder for foldflow subprocesses) and ``spawn``.
- ``poll``: ``run``, and ``eventually``/``wait_for``, the one way a test waits for a condition.
- ``helpers``: the in-process cluster (engine, activity worker, agent simulator), history checks.
- ``fault_support``: worker processes by name, bulk starts and history reads for the fault tests.
- ``ops_support``, ``ops_handlers``: HTTP probes and a slow handler for the operations tests.
"""

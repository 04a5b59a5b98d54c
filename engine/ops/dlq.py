"""Dead letters for operators (`foldflow dlq`): the implementation lives in
engine/store/dlq.py, where the API's dead-letter routes can reach it too."""

from __future__ import annotations

from engine.store.dlq import (
    EVENTS,
    DeadLetter,
    DeadLetters,
    Partition,
    check_entry_id,
    deployment_keys,
    hash_tag,
    parse_partition,
    replay_refusal,
    replay_target_ok,
)

__all__ = ["EVENTS", "DeadLetter", "DeadLetters", "Partition", "check_entry_id", "deployment_keys", "hash_tag",
           "parse_partition", "replay_refusal", "replay_target_ok"]

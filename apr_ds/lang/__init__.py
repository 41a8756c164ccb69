"""The task-independent part of the APR trace language: spawn and join blocks, and the conditioning prefixes.

`render` writes the blocks' markers and the prefixes; `syntax` cuts a spawn block out of a thread's output
(malformed input becomes a typed `SpawnError`). What the lines inside the blocks say is the task's: each task
(`apr_ds.tasks`) writes and reads its own lines and builds on these.
"""

from apr_ds.lang.render import (BLOCK_PHRASES, CALL_CLOSE, CALL_OPEN, JOIN_CLOSE, JOIN_OPEN, SUB_CALL_BUDGET,
                                TOKEN_BUDGET, join_block, spawn_block, strip_budget_prefixes, sub_call_budget_prefix,
                                token_budget_prefix)
from apr_ds.lang.syntax import SpawnBlock, SpawnError, ends_with_spawn, lines_outside_joins, split_spawn

__all__ = ["BLOCK_PHRASES", "CALL_OPEN", "CALL_CLOSE", "JOIN_OPEN", "JOIN_CLOSE", "TOKEN_BUDGET", "SUB_CALL_BUDGET",
           "spawn_block", "join_block", "token_budget_prefix", "sub_call_budget_prefix", "strip_budget_prefixes",
           "SpawnBlock", "SpawnError", "ends_with_spawn", "lines_outside_joins", "split_spawn"]

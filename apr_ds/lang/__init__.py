"""The APR trace language: one implementation for the solvers that write traces and the runtime that runs them.

`render` formats every line and block (the only place trace text is written); `syntax` parses spawn
blocks, child results and solution paths back (malformed input becomes a typed `SpawnError`).
"""

from apr_ds.lang.render import (CALL_CLOSE, CALL_OPEN, JOIN_CLOSE, JOIN_OPEN, apr_prompt, child_prompt,
                                join_block, sosp_prompt, spawn_block)
from apr_ds.lang.syntax import (ChildCall, Spawn, SpawnError, child_result, ends_with_spawn, join_text,
                                parse_spawn)

__all__ = ["CALL_OPEN", "CALL_CLOSE", "JOIN_OPEN", "JOIN_CLOSE", "apr_prompt", "sosp_prompt", "child_prompt",
           "spawn_block", "join_block", "Spawn", "ChildCall", "SpawnError", "parse_spawn", "ends_with_spawn",
           "child_result", "join_text"]

"""Solver runs -> SFT sequences (apr-reference §2.4), with conditioning prefixes and filtering.

- SoS+: one sequence per problem, the whole trace.
- APR: one sequence per main call and one per child call. A main call after a join repeats the
  pre-spawn text, so that text is trained once per main call that contains it (as the reference does).

Every sequence is `<s>` + text + `</s>` and its loss covers every non-pad token (prompt included).

Conditioning (the reference never released how it was inserted; this is our definition):
- `token_budget` (SoS+): `Token Budget: B ` before the trace, where B is the sequence's token count
  (with bos/eos, without the prefix) rounded up to a multiple of `data.token_budget_bin`, capped at
  `data.max_seq_len`.
- `sub_calls` (APR): `Sub Call Budget: N ` before every main call of the root thread, where N is the
  total number of child threads the root spawned in that run (over all its spawns). Children do not
  get it (reference behaviour).
"""

from __future__ import annotations

from dataclasses import dataclass

from apr_ds.errors import UserError
from apr_ds.lang import sub_call_budget_prefix, token_budget_prefix
from apr_ds.tasks.task import SolverRun


@dataclass(frozen=True)
class Sequence:
    text: str
    problem: int
    role: str  # "main" (a call of the root thread) or "child"

    def to_json(self) -> dict:
        return {"text": self.text, "problem": self.problem, "role": self.role}


def round_up(n: int, bin_size: int, cap: int) -> int:
    return min(cap, -(-n // bin_size) * bin_size)


def run_to_sequences(run: SolverRun, problem: int, condition: str, count_tokens, bin_size: int, cap: int) -> list[Sequence]:
    """`condition` is none, token_budget or sub_calls; `count_tokens(text)` gives a text's token count without bos/eos."""
    prefix = ""
    if condition == "token_budget":
        prefix = token_budget_prefix(round_up(count_tokens(run.main_calls[0]) + 2, bin_size, cap))
    elif condition == "sub_calls":
        prefix = sub_call_budget_prefix(run.num_children)
    elif condition != "none":
        raise UserError(f"unknown conditioning {condition!r}; use none, token_budget or sub_calls")
    out = [Sequence(prefix + text, problem, "main") for text in run.main_calls]
    for thread in run.threads()[1:]:
        out += [Sequence(text, problem, "child") for text in thread.main_calls]
    return out


def run_to_json(run: SolverRun) -> dict:
    """The call tree of a solver run, as stored in traces/*.jsonl."""
    return {"prompt": run.prompt, "main_calls": run.main_calls, "solved": run.solved,
            "sub_calls": [[run_to_json(child) for child in spawn] for spawn in run.sub_calls]}


def common_prefix_len(a, b) -> int:
    """Tokens two sequences share from the start: how total-token counts avoid counting a shared prefix twice."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i

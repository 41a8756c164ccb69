"""The trace language: one implementation for the solver that writes traces and the runtime that runs them."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apr_ds.config import SolverConfig, TaskConfig
from apr_ds.lang import CALL_CLOSE, CALL_OPEN, JOIN_CLOSE, SpawnError, ends_with_spawn
from apr_ds.tasks.countdown import Problem
from apr_ds.tasks.countdown_solvers import solve_apr
from apr_ds.tasks.countdown_task import CountdownTask
from apr_ds.tasks.task import problem_rng

TASK = CountdownTask(TaskConfig(), SolverConfig())
parse_spawn, child_result, join_text, verify = TASK.parse_spawn, TASK.child_result, TASK.join_text, TASK.verify

PROBLEM = Problem((22, 26, 31, 53), 27)


def _runs(count=150, **solver):
    cfg = SolverConfig(**{"apr_max_beam": 6, "apr_max_child_beam": 10, **solver})
    problems = [Problem((a, b, c, d), t) for a, b, c, d, t in
                ((random.Random(i).randint(1, 40), random.Random(i + 1).randint(1, 40), random.Random(i + 2).randint(1, 40),
                  random.Random(i + 3).randint(1, 40), random.Random(i + 4).randint(10, 50)) for i in range(count))]
    return [(p, solve_apr(p, cfg, problem_rng(0, "apr", i))) for i, p in enumerate(problems)]


def _check_round_trip(run):
    """Executing the solver's own spawn blocks reproduces its child prompts and its join texts, byte for byte."""
    for k, spawn_children in enumerate(run.sub_calls):
        parent_output = run.main_calls[k].rstrip("\n")  # the runtime strips the newline before EOS
        assert ends_with_spawn(parent_output)
        spawn = parse_spawn(parent_output)
        assert not isinstance(spawn, SpawnError), spawn
        assert [TASK.child_prompt(c) for c in spawn.children] == [child.prompt for child in spawn_children]
        results = [child_result(child.main_calls[-1].rstrip("\n")) for child in spawn_children]
        joined = join_text(spawn, results)
        assert run.main_calls[k + 1].startswith(joined)
        assert joined.endswith(JOIN_CLOSE + "\n")
        for child in spawn_children:
            _check_round_trip(child)


def test_round_trip_over_many_solver_runs():
    runs = _runs()
    spawned = [run for _, run in runs if run.sub_calls]
    assert len(spawned) > 50
    for run in spawned:
        _check_round_trip(run)
    # the final main call of a solved program verifies; the others end with a spawn or give up
    for problem, run in runs:
        assert verify(problem, run.main_calls[-1]).ok == run.solved


def test_round_trip_with_nested_spawns():
    runs = _runs(count=60, max_spawn_depth=2, apr_max_child_beam=6)
    nested = [run for _, run in runs if any(child.sub_calls for spawn in run.sub_calls for child in spawn)]
    assert nested, "depth 2 should let some children spawn"
    for run in nested:
        _check_round_trip(run)
    assert any("at level 2>" in child.main_calls[0] for run in nested for spawn in run.sub_calls for child in spawn)


def test_no_spawn_without_option():
    for _, run in _runs(count=40, spawn_probability=0.0):
        assert not run.sub_calls and CALL_OPEN not in run.main_calls[0]


PARENT = ("Moving to Node #0\nCurrent State: 27:[22, 26, 31, 53], Operations: []\n"
          "Exploring Operation: 53-22=31, Resulting Numbers: [26, 31, 31]\n"
          "Generated Node #0,0: 27:[26, 31, 31] Operation: 53-22=31\n"
          "Exploring Operation: 53-26=27, Resulting Numbers: [22, 31, 27]\n"
          "Generated Node #0,1: 27:[22, 31, 27] Operation: 53-26=27\n")
BLOCK = ("<Calling Sub Searches>\n<Start Sub Search 0 at level 1> Moving to Node #0,1\n"
         "<Start Sub Search 1 at level 1> Moving to Node #0,0\n<End Calling Sub Searches>")


def test_parse_a_spawn_and_build_child_prompts():
    spawn = parse_spawn(PARENT + BLOCK + "\n")
    assert spawn and spawn.level == 1 and spawn.prefix == PARENT
    assert [TASK.child_prompt(c) for c in spawn.children] == [
        "Moving to Node #0,1\nCurrent State: 27:[22, 31, 27], Operations: ['53-26=27']",
        "Moving to Node #0,0\nCurrent State: 27:[26, 31, 31], Operations: ['53-22=31']"]
    assert TASK.child_prompt(spawn.children[0], token_budget=1024).startswith("Token Budget: 1024 Moving to Node #0,1\n")


@pytest.mark.parametrize("text, kind", [
    (PARENT, "not_a_spawn"),
    (PARENT + BLOCK.rsplit("\n", 1)[0], "truncated"),
    (PARENT + BLOCK.replace("#0,1", "#0,7"), "unknown_node"),
    (PARENT.replace("[22, 31, 27] Operation", "[22, 31, 28] Operation") + BLOCK, "wrong_numbers"),
    (PARENT.replace("53-26=27, Resulting Numbers: [22, 31, 27]\nGenerated Node #0,1: 27:[22, 31, 27] Operation: 53-26=27",
                    "53-26=27, Resulting Numbers: [22, 31, 27]\nGenerated Node #0,1: 27:[22, 31, 27] Operation: 53-26=28") + BLOCK, "wrong_numbers"),
    (PARENT + BLOCK.replace("<Start Sub Search 1 at", "<Calling Sub Searches>\n<Start Sub Search 1 at"), "duplicated_marker"),
    (PARENT + BLOCK.replace("Sub Search 1 at level 1", "Sub Search 3 at level 1"), "bad_numbering"),
    (PARENT + BLOCK.replace("#0,0\n", "#0,1\n"), "duplicate_child"),
    (PARENT + "<Calling Sub Searches>\n<End Calling Sub Searches>", "empty"),
    (PARENT + BLOCK.replace("<Start Sub Search 0 at level 1> Moving to Node #0,1", "Moving to Node #0,1"), "bad_line"),
    (PARENT.rstrip("\n") + BLOCK, "bad_line"),
])
def test_malformed_spawns_are_typed_errors(text, kind):
    result = parse_spawn(text)
    assert isinstance(result, SpawnError) and result.kind == kind, result
    assert not result  # falsy, so `if spawn:` works


def test_without_the_numbers_check_a_child_starts_from_the_state_its_parent_claimed():
    """The reference runtime: a wrong step in a spawned node is the verifier's business, not the spawn's."""
    wrong = PARENT.replace("[22, 31, 27] Operation", "[22, 31, 28] Operation") + BLOCK
    assert parse_spawn(wrong).kind == "wrong_numbers"
    spawn = parse_spawn(wrong, check_numbers=False)
    assert TASK.child_prompt(spawn.children[0]) == "Moving to Node #0,1\nCurrent State: 27:[22, 31, 28], Operations: ['53-26=27']"
    orphan = (PARENT + BLOCK).replace("Generated Node #0,1:", "Generated Node #5,1:").replace("Node #0,1\n", "Node #5,1\n")
    assert parse_spawn(orphan, check_numbers=False).kind == "wrong_numbers"  # its parent never appears: structural


def test_child_result_and_join_text():
    child_out = ("Moving to Node #0,1\nCurrent State: 27:[22, 31, 27], Operations: ['53-26=27']\n"
                 "Exploring Operation: 31-22=9, Resulting Numbers: [27, 9]\nGenerated Node #0,1,0: 27:[27, 9] Operation: 31-22=9\n"
                 "Exploring Operation: 27*9=243, Resulting Numbers: [243]\n243,27 unequal: No Solution\n"
                 "Exploring Operation: 27+0=27, Resulting Numbers: [27]\n27,27 equal: Goal Reached\n"
                 "Moving to Node #0,1\nCurrent State: 27:[22, 31, 27], Operations: ['53-26=27']\n27,27 equal: Goal Reached")
    assert child_result(child_out) == "Moving to Node #0,1\nCurrent State: 27:[22, 31, 27], Operations: ['53-26=27']\n27,27 equal: Goal Reached"
    assert child_result("No solution found.") is None
    spawn = parse_spawn(PARENT + BLOCK)
    joined = join_text(spawn, [child_result(child_out), None])
    assert joined == PARENT + ("<Sub Searches>\n<Goal Reached in Sub Search 0 at level 1 at Node #0,1>\n"
                               "Moving to Node #0,1\nCurrent State: 27:[22, 31, 27], Operations: ['53-26=27']\n27,27 equal: Goal Reached\n"
                               "<No Solution in Sub Search 1 at level 1 at Node #0,0>\n<End Sub Searches>\n")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(list("0123456789,#:[]<>' \n") + ["Moving to Node #", "Current State: ", "Generated Node #",
                                                                  CALL_OPEN, CALL_CLOSE, "<Start Sub Search ", " at level 1>",
                                                                  PARENT, BLOCK, "Goal Reached"]),
                max_size=80).map("".join))
def test_parser_never_raises_on_garbage(text):
    result = parse_spawn(text)
    assert isinstance(result, SpawnError) or result.children
    child_result(text)

"""Per-line diagnostics: each skill is judged against the state the line was written under."""

import math

from apr_ds.tasks.countdown_lines import count_lines, line_diagnostics

TRACE = """Current State: 24:[3, 8, 2, 5], Operations: []
Exploring Operation: 8-3=5, Resulting Numbers: [2, 5, 5]
Generated Node #0,0: 24:[2, 5, 5] Operation: 8-3=5
Exploring Operation: 8*3=25, Resulting Numbers: [2, 5, 25]
Generated Node #0,1: 23:[2, 5, 25] Operation: 8*3=25
Exploring Operation: 9+2=11, Resulting Numbers: [3, 8, 5, 11]
Exploring Operation: 5-2=3, Resulting Numbers: [3, 8, 3]
Exploring Operation: 2-5=3, Resulting Numbers: [3, 8, 3]
<Sub Searches>
Exploring Operation: 1+1=7, Resulting Numbers: [7]
<End Sub Searches>
Current State: 24:[2, 5, 5], Operations: ['8-3=5']
Exploring Operation: 5*5=25, Resulting Numbers: [2, 25]
"""


def test_each_skill_is_counted_against_the_current_state():
    counts = count_lines(TRACE)
    # lines: 8-3 (all right), 8*3=25 (wrong arithmetic; the list follows from the c it wrote), 9+2 (9 absent:
    # operands and list wrong), 5-2=3 (right), 2-5=3 (smaller first: wrong arithmetic), 5*5 under the second state
    assert counts["operands_total"] == counts["arithmetic_total"] == counts["result_list_total"] == 6
    assert counts["operands"] == 5
    assert counts["arithmetic"] == 4
    assert counts["result_list"] == 5
    assert (counts["target"], counts["target_total"]) == (1, 2)  # node 0,1 miscopied 24 as 23
    assert counts["distinct"] == counts["distinct_total"] == 6


def test_an_operation_repeated_from_the_same_state_is_not_distinct():
    trace = ("Current State: 16:[19, 16, 10, 2], Operations: []\n"
             "Exploring Operation: 19-10=9, Resulting Numbers: [16, 2, 9]\n"
             "Exploring Operation: 19-10=9, Resulting Numbers: [16, 2, 9]\n"
             "Exploring Operation: 2+16=18, Resulting Numbers: [19, 10, 18]\n"
             "Exploring Operation: 16+2=18, Resulting Numbers: [19, 10, 18]\n"
             "Exploring Operation: 10-2=8, Resulting Numbers: [19, 16, 8]\n"
             "Current State: 16:[16, 2, 9], Operations: ['19-10=9']\n"
             "Exploring Operation: 19-10=9, Resulting Numbers: [16, 2, 9]\n")  # a new state starts a new set
    counts = count_lines(trace)
    assert (counts["distinct"], counts["distinct_total"]) == (4, 6)


def test_join_blocks_are_not_counted_and_empty_input_is_nan():
    assert count_lines("<Sub Searches>\nCurrent State: 5:[1, 4], Operations: []\nExploring Operation: 1+4=5, "
                       "Resulting Numbers: [5]\n<End Sub Searches>\n")["operands_total"] == 0
    empty = line_diagnostics([])
    assert all(math.isnan(v["right"]) and v["lines"] == 0 for v in empty.values())
    both = line_diagnostics([TRACE, TRACE])
    assert both["arithmetic"] == {"right": 8 / 12, "lines": 12}


def test_operator_counts_split_the_arithmetic_by_operator():
    from apr_ds.tasks.countdown_lines import operator_counts
    counts = operator_counts([TRACE])
    # -: 8-3=5 right, 5-2=3 right, 2-5=3 (smaller first); *: 8*3=25 wrong, 5*5=25 right; +: 9+2=11 (right sum of
    # an absent operand); /: none. The join block's 1+1=7 is not counted.
    assert counts["-"] == {"lines": 3, "right": 2, "no_right_result": 1}
    assert counts["*"] == {"lines": 2, "right": 1, "no_right_result": 0}
    assert counts["+"] == {"lines": 1, "right": 1, "no_right_result": 0}
    assert counts["/"] == {"lines": 0, "right": 0, "no_right_result": 0}
    inexact = "Current State: 3:[7, 2], Operations: []\nExploring Operation: 7/2=3, Resulting Numbers: [3]\n"
    assert operator_counts([inexact])["/"] == {"lines": 1, "right": 0, "no_right_result": 1}


def test_a_complete_line_that_does_not_parse_is_badly_formatted_and_checked_for_nothing_else():
    trace = ("Current State: 24:[3, 8, 2, 5], Operations: []\n"
             "Exploring Operation: 22+38=]\n"                       # stopped before its result
             "Current State: 19 unequal: No Solution\n"
             "Exploring Operation: 8-3=5, Resulting Numbers: [2, 5, 5]\n"
             "Generated Node #0,0: 24:[2, 5, 5] Operation: 8-3=5\n"
             "Moving to Node #0,0\n"                                # not a checked line at all
             "Exploring Operation: 2+5=")                           # cut by the context: not judged
    counts = count_lines(trace)
    assert (counts["format"], counts["format_total"]) == (3, 5)
    assert counts["operands_total"] == 1 and counts["target_total"] == 1


def _solver_texts(run):
    yield from run.main_calls
    for children in getattr(run, "sub_calls", []):
        for child in children:
            yield from _solver_texts(child)


def test_every_line_the_solvers_write_is_well_formed():
    from apr_ds.config import SolverConfig
    from apr_ds.tasks.countdown import Problem
    from apr_ds.tasks.countdown_solvers import solve_apr, solve_sosp
    from apr_ds.tasks.task import problem_rng
    problems = [Problem((3 + i % 7, 8, 2 + i % 5, 5 + i % 11), 10 + i % 20) for i in range(40)]
    for solve in (solve_sosp, solve_apr):
        texts = [t for i, p in enumerate(problems) for t in _solver_texts(solve(p, SolverConfig(), problem_rng(0, "x", i)))]
        diagnostics = line_diagnostics(texts)
        assert diagnostics["format"]["lines"] > 500 and diagnostics["format"]["right"] == 1.0, solve.__name__

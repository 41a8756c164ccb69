"""Per-line checks of Countdown traces: which skills a model has before it solves anything.

End-to-end success needs every line of a solution path right, so accuracy stays at 0% long after a model
has learned most of the parts. For every `Exploring Operation` line a model wrote (join blocks, which copy
a child's lines into its parent, are skipped), against the `Current State` it was written under:

    operands     both operands are in the state's numbers (as a multiset)
    arithmetic   a op b = c is right (subtraction larger first, exact division)
    result_list  `Resulting Numbers` equals the state's numbers minus the operands plus c (as multisets)
    distinct     the operation was not already explored from this state (a repeat wastes a beam slot;
                 a+b and b+a, a*b and b*a are the same operation)
and for every `Generated Node` line:
    target       the node's target is the state's target (state copying)
and for every complete line (one that ends in a newline: the context may cut the last) that starts like one of
`Current State`, `Exploring Operation` or `Generated Node`:
    format       the line parses. A line that does not (`Exploring Operation: 22+38=]`) escapes every other
                 check, so RL's line penalty (which reads these verdicts) would leave it free, and RL does
                 learn to write such lines when nothing answers for them.
"""

from __future__ import annotations

import re
from collections import Counter

from apr_ds.lang import lines_outside_joins
from apr_ds.tasks.countdown_trace import EXPLORE_RE, GENERATED_RE, LINE_STARTS, STATE_RE, parse_ints
from apr_ds.tasks.task import count_checks, failures_by_line, fraction_right

SKILLS = ("operands", "arithmetic", "result_list", "distinct", "target", "format")
_WHOLE_LINE = re.compile(r".*")


def _operation(m) -> tuple[int, str, int]:
    """(a, sign, b) of an `Exploring Operation` match."""
    return int(m.group(1)), m.group(2), int(m.group(3))


def _has_a_right_result(a: int, sign: str, b: int) -> bool:
    return not (sign == "-" and a < b) and not (sign == "/" and (b == 0 or a % b))


def _arithmetic_ok(a: int, sign: str, b: int, c: int) -> bool:
    if not _has_a_right_result(a, sign, b):
        return False
    return c == {"+": lambda: a + b, "*": lambda: a * b, "-": lambda: a - b, "/": lambda: a // b}[sign]()


def _operation_verdicts(m, state_nums, explored: set) -> dict:
    """The skills of one `Exploring Operation` line, against the numbers of the state it was written under."""
    (a, sign, b), c = _operation(m), int(m.group(4))
    pool = Counter(state_nums)
    operands_ok = pool[a] >= 1 and pool[b] >= 1 and (a != b or pool[a] >= 2)
    expected = (pool - Counter([a, b])) + Counter([c]) if operands_ok else None
    operation = (min(a, b), sign, max(a, b)) if sign in "+*" else (a, sign, b)
    verdicts = {"operands": operands_ok, "arithmetic": _arithmetic_ok(a, sign, b, c),
                "result_list": expected is not None and Counter(parse_ints(m.group(5))) == expected,
                "distinct": operation not in explored}
    explored.add(operation)
    return verdicts


def checked_lines(text: str):
    """Yields (offset of the line in `text`, its match, {skill: right}) for every checked line outside join blocks."""
    state, explored = None, set()
    for start, line, complete in lines_outside_joins(text):
        well_formed = {"format": True} if complete else {}
        if m := STATE_RE.match(line):
            state, explored = (int(m.group(1)), parse_ints(m.group(2))), set()
            yield start, m, well_formed
        elif m := EXPLORE_RE.match(line):
            if state is not None:
                yield start, m, {**_operation_verdicts(m, state[1], explored), **well_formed}
        elif m := GENERATED_RE.match(line):
            if state is not None:
                yield start, m, {"target": int(m.group(2)) == state[0], **well_formed}
        elif complete and line.startswith(tuple(LINE_STARTS)):  # starts like a checked line, parses as none
            yield start, _WHOLE_LINE.match(line), {"format": False}


def count_lines(text: str) -> Counter:
    """Counts `{skill}` (right) and `{skill}_total` over one thread's text."""
    return count_checks(verdicts for _, _, verdicts in checked_lines(text))


# The part of its line each wrong skill names, as (first, last) regex group: only the tokens that were wrong given
# what came before them. The rest of the line can be right given its prefix (the right result of a repeated
# operation, a list that faithfully copies a wrong result), and pushing it down would teach the model to stop
# computing or copying faithfully. An operation with no right result (a smaller number first, an inexact division)
# is the operation's mistake, not its result's: blamed on the result, the operation goes unpenalised and the model
# writes more of them. A line that does not parse answers for all of itself: where it went wrong is not known.
_WRONG_GROUPS = {"operands": (1, 3), "distinct": (1, 3), "arithmetic": (4, 4), "result_list": (5, 5), "target": (2, 2),
                 "format": (0, 0)}


def wrong_spans(text: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of `text` that a checked line got wrong: each wrong skill's own part."""
    spans = set()
    for start, m, verdicts in checked_lines(text):
        for skill, right in verdicts.items():
            # With a wrong operand no resulting list is right: the wrong operand is the mistake to answer for
            if right or (skill == "result_list" and not verdicts["operands"]):
                continue
            first, last = _WRONG_GROUPS[skill]
            if skill == "arithmetic" and not _has_a_right_result(*_operation(m)):
                first, last = _WRONG_GROUPS["operands"]
            spans.add((start + m.start(first), start + m.end(last)))
    return sorted(spans)


def failed_checks(text: str) -> dict[int, list[str]]:
    """The skills each line of `text.splitlines()` got wrong, by line number."""
    return failures_by_line(text, ((start, verdicts) for start, _, verdicts in checked_lines(text)))


def operator_counts(texts) -> dict:
    """Per operator (+ * - /): explored lines, how many have the right result, and how many have no right result at
    all (a smaller number first, an inexact division). RL with a line penalty can learn to avoid an operator instead
    of getting it right; the per-line arithmetic alone does not show that."""
    counts = {sign: Counter() for sign in "+*-/"}
    for text in texts:
        for _, m, verdicts in checked_lines(text):
            if "arithmetic" in verdicts:
                operation = _operation(m)
                counts[operation[1]].update(lines=1, right=verdicts["arithmetic"],
                                            no_right_result=not _has_a_right_result(*operation))
    return {sign: {key: c[key] for key in ("lines", "right", "no_right_result")} for sign, c in counts.items()}


def malformed_counts(texts) -> dict:
    """Complete lines that start like a `Current State`, `Exploring Operation` or `Generated Node` line and do not
    parse, by kind. RL can trade a checked mistake for an unparsable line, which the per-skill fractions hide: the
    line leaves every other skill's count."""
    counts = Counter({kind: 0 for kind in LINE_STARTS.values()})
    for text in texts:
        for start, _, verdicts in checked_lines(text):
            if verdicts.get("format") is False:
                counts[next(kind for prefix, kind in LINE_STARTS.items() if text.startswith(prefix, start))] += 1
    return dict(counts)


def line_diagnostics(texts) -> dict:
    """Fraction right per skill over all threads' texts, with the number of lines behind each."""
    return fraction_right(sum((count_lines(text) for text in texts), Counter()), SKILLS)

"""RL's line penalty: which generated tokens a wrong line marks (the task's wrong spans mapped onto tokens by
`LineMarks`, on the rollout side), and the advantages the learner gives them."""

from types import SimpleNamespace

import numpy as np
import pytest

from apr_ds.cluster.messages import TrajectoryGroup
from apr_ds.config import load_config
from apr_ds.data.tokenizer import build_tokenizer
from apr_ds.errors import UserError
from apr_ds.learner.batch import build_shares
from apr_ds.rollout.line_marks import LineMarks
from apr_ds.tasks import get_task
from apr_ds.tasks.countdown_lines import count_lines, wrong_spans

TASK = get_task(load_config("tiny"))

STATE = "Current State: 24:[3, 8, 1], Operations: []\n"
RIGHT = "Exploring Operation: 3+8=11, Resulting Numbers: [1, 11]\n"
WRONG_RESULT = "Exploring Operation: 3*8=25, Resulting Numbers: [1, 25]\n"
REPEATED = "Exploring Operation: 8+3=11, Resulting Numbers: [1, 11]\n"
WRONG_LIST = "Exploring Operation: 8-1=7, Resulting Numbers: [3, 8]\n"


def _spanned(text: str) -> list[str]:
    return [text[start:end] for start, end in wrong_spans(text)]


def test_only_the_wrong_part_of_a_wrong_line_is_spanned():
    """A list that copies a wrong result, and the right result of a repeated operation, are right given their prefix."""
    text = STATE + RIGHT + WRONG_RESULT + REPEATED + WRONG_LIST
    assert _spanned(text) == ["25", "8+3", "3, 8"]
    counts = count_lines(text)  # the diagnostics read the same checks
    assert (counts["arithmetic"], counts["distinct"], counts["result_list"], counts["arithmetic_total"]) == (3, 3, 3, 4)


def test_a_wrong_operand_answers_for_its_line_not_the_list_after_it():
    text = STATE + "Exploring Operation: 3+9=12, Resulting Numbers: [8, 1, 12]\n"
    assert _spanned(text) == ["3+9"]
    assert count_lines(text)["result_list"] == 0  # the diagnostics still count the list wrong


def test_an_operation_with_no_right_result_answers_for_itself_not_its_result():
    smaller_first = "Exploring Operation: 1-8=7, Resulting Numbers: [3, 7]\n"
    inexact = "Exploring Operation: 8/3=2, Resulting Numbers: [1, 2]\n"
    wrong_result = "Exploring Operation: 8-1=6, Resulting Numbers: [3, 6]\n"
    assert _spanned(STATE + smaller_first + inexact + wrong_result) == ["1-8", "8/3", "6"]


def test_join_blocks_and_lines_without_a_state_are_not_checked():
    join = "<Sub Searches>\n" + STATE + WRONG_RESULT + "<End Sub Searches>\n"
    assert _spanned(WRONG_RESULT + join) == []


def test_marks_cover_only_the_generated_tokens_of_the_wrong_part():
    tokenizer = build_tokenizer()
    marks_of = LineMarks(tokenizer, TASK)
    prompt = tokenizer.encode("<s>" + STATE)
    output = tokenizer.encode(RIGHT + WRONG_RESULT)
    marks = marks_of(np.asarray(prompt + output), len(prompt))
    assert len(marks) == len(output)
    marked = tokenizer.decode([t for t, m in zip(output, marks) if m])
    assert marked == "25"
    # a wrong line that sits in the prompt (an earlier call's output) is not this sequence's to answer for
    prompt = tokenizer.encode("<s>" + STATE + WRONG_RESULT)
    output = tokenizer.encode(RIGHT)
    assert not marks_of(np.asarray(prompt + output), len(prompt)).any()


def test_a_tokenizer_whose_tokens_do_not_decode_one_by_one_is_refused():
    domain = build_tokenizer()
    spaced = SimpleNamespace(encode=domain.encode, decode=lambda ids, **kw: domain.decode(ids, **kw) + " ")
    with pytest.raises(UserError, match="rl.line_penalty needs a tokenizer"):
        LineMarks(spaced, TASK)


def _group(rewards, prompt_len: int, sequences, marks_of) -> TrajectoryGroup:
    """One group as a rollout rank ships it: sequence p is program p's, its output tokens marked by `marks_of`."""
    table = np.asarray([[prompt_len, len(s), p] for p, s in enumerate(sequences)])
    behaviour = np.zeros(sum(len(s) - prompt_len for s in sequences), np.float32)
    marks = np.concatenate([marks_of(np.asarray(s), prompt_len) for s in sequences])
    return TrajectoryGroup(SimpleNamespace(rewards=rewards), np.asarray(sum(sequences, [])), behaviour, table, marks)


def test_build_shares_subtracts_the_penalty_even_from_a_failed_program():
    tokenizer = build_tokenizer()
    wrong_tokens = LineMarks(tokenizer, TASK)
    prompt = tokenizer.encode("<s>" + STATE)
    sequences = [prompt + tokenizer.encode(RIGHT), prompt + tokenizer.encode(WRONG_RESULT)]  # program 0, program 1
    group = _group([1, 0], len(prompt), sequences, wrong_tokens)

    shares, counts = build_shares([group], 1, 0.0, "reward")  # off: the failed program is left out
    assert counts.trained_sequences == 1 and counts.penalised_tokens == 0
    shares, counts = build_shares([group], 1, 0.0, "reward", line_penalty=0.5)
    assert counts.trained_sequences == 2 and counts.sequences == 2
    advantages = {tuple(s.ids): s.advantages for s in shares[0].sequences}
    solved, failed = (advantages[tuple(s)] for s in sequences)
    assert set(solved.tolist()) == {1.0}
    wrong = tokenizer.encode("25")
    assert counts.penalised_tokens == len(wrong) == int((failed == -0.5).sum())
    assert failed[-1] == 0.0 and failed[0] == 0.0  # only the wrong result, not the line around it


def test_collated_advantages_line_up_with_the_tokens_they_score():
    """The learner predicts token t+1 at position t: a marked token's advantage must sit where it is the target."""
    from apr_ds.learner.batch import collate
    tokenizer = build_tokenizer()
    prompt = tokenizer.encode("<s>" + STATE)
    sequence = prompt + tokenizer.encode(WRONG_RESULT)
    group = _group([0], len(prompt), [sequence], LineMarks(tokenizer, TASK))
    shares, _ = build_shares([group], 1, 0.0, "reward", line_penalty=1.0)
    ids, targets, mask, _, advantages, _ = collate(shares[0].sequences, pad_id=0, bos_id=1)
    penalised = [int(t) for t, a in zip(targets[0], advantages[0]) if a == -1.0]
    assert tokenizer.decode(penalised) == "25"
    assert mask[0, :len(prompt) - 1].sum() == 0 and (advantages[0][mask[0] == 0] == 0).all()


def test_a_line_that_does_not_parse_answers_for_all_of_itself():
    garbled = "Exploring Operation: 3+8=]\n"  # the result left out, so no other check could catch it
    assert _spanned(STATE + garbled + RIGHT) == ["Exploring Operation: 3+8=]"]
    assert _spanned(STATE + "Exploring Operation: 3+8=") == []  # a last line the context cut is not judged

"""The Sudoku task: puzzles with one solution, splits, the strict verifier, the depth-first solvers' traces, the spawn
and join the runtime runs, the per-line checks, and the pipeline end to end on the sudoku-tiny preset."""

import asyncio
import json
import random
import subprocess
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apr_ds.config import ConfigError, RolloutConfig, SolverConfig, TaskConfig, load_config
from apr_ds.data.tokenizer import build_tokenizer, decode, encode
from apr_ds.lang import CALL_CLOSE, CALL_OPEN, JOIN_CLOSE, SpawnError, ends_with_spawn
from apr_ds.tasks import get_task
from apr_ds.tasks.sudoku import (Puzzle, count_solutions, draw_puzzle, grid_text, is_heldout, make_splits, parse_grid,
                                 problems_beyond_train, random_solution, units)
from apr_ds.tasks.sudoku_lines import failed_checks, line_diagnostics, wrong_spans
from apr_ds.tasks.sudoku_task import SudokuTask
from apr_ds.tasks.task import problem_rng

FIRST_BLANK = SolverConfig(sudoku_cell_choice="first_blank")
TASK = SudokuTask(TaskConfig(name="sudoku"), FIRST_BLANK)
TOKENIZER = build_tokenizer(SudokuTask.trace_phrases)


def _task(size=4, blanks=10, **solver):
    return SudokuTask(TaskConfig(name="sudoku", sudoku_size=size, sudoku_blanks=blanks), SolverConfig(**solver))


def _puzzles(count, size=4, blanks=10, seed=5):
    return [draw_puzzle(seed, "seen", i, size, blanks, 0.1) for i in range(count)]


def _solution(puzzle):
    return _task(puzzle.size).solve(puzzle, "sosp", random.Random(0)).goal


# ---------------------------------------------------------------------------- puzzles and splits


def test_boxes_have_the_shape_of_their_size():
    rows, cols, boxes = units(6)
    assert boxes[0] == (0, 1, 2, 6, 7, 8) and boxes[1] == (3, 4, 5, 9, 10, 11) and len(boxes) == 6  # two rows by three
    assert units(4)[2][3] == (10, 11, 14, 15) and len(units(9)[2][4]) == 9
    for size in (4, 6, 9):
        solution = random_solution(size, random.Random(size))
        assert all(sorted(solution[i] for i in unit) == list(range(1, size + 1)) for group in units(size) for unit in group)
        assert parse_grid(grid_text(solution, size)) == (size, solution)
    assert parse_grid("123 456 789") is None and parse_grid("1234 1234 1234") is None


def test_solution_counting_stops_at_the_limit():
    solved = random_solution(4, random.Random(0))
    assert count_solutions(solved, 4) == 1
    assert count_solutions((0,) * 16, 4) == 2 and count_solutions((0,) * 16, 4, limit=300) == 288  # every 4x4 grid
    assert count_solutions((1, 1) + (0,) * 14, 4) == 0  # conflicting givens have none


@pytest.mark.parametrize("size, blanks, count", [(4, 10, 40), (4, 12, 20), (6, 20, 10), (9, 45, 2)])
def test_generated_puzzles_have_exactly_one_solution(size, blanks, count):
    for puzzle in _puzzles(count, size, blanks):
        assert puzzle.givens.count(0) == blanks and count_solutions(puzzle.givens, size) == 1
        assert Puzzle.from_json(json.loads(json.dumps(puzzle.to_json()))) == puzzle


def _small(**kw):
    return TaskConfig(**{**dict(name="sudoku", sudoku_size=4, sudoku_blanks=10, num_train=200, num_val=30, num_test=30,
                                num_test_unseen_targets=30, seed=3), **kw})


def test_splits_are_disjoint_reproducible_and_hold_out_solutions():
    cfg = _small()
    splits = make_splits(cfg, workers=1)
    assert {k: len(v) for k, v in splits.items()} == {"train": 200, "val": 30, "test": 30, "test_unseen_targets": 30}
    keys = [p.key for ps in splits.values() for p in ps]
    assert len(keys) == len(set(keys))
    assert splits == make_splits(cfg, workers=2, chunk=16)
    for name, puzzles in splits.items():
        assert all(is_heldout(_solution(p), 4, cfg.unseen_target_fraction, cfg.seed) == (name == "test_unseen_targets")
                   for p in puzzles)
    grown = make_splits(_small(num_train=300))
    assert grown["test"] == splits["test"] and grown["val"] == splits["val"] and grown["train"][:200] == splits["train"]
    beyond = problems_beyond_train(cfg, 20)
    assert len(beyond) == 20 and not {p.key for p in beyond} & set(keys)


def test_impossible_requests_are_clear_errors():
    with pytest.raises(ValueError, match="unseen_target_fraction"):
        make_splits(_small(unseen_target_fraction=0.0))
    with pytest.raises(ConfigError, match=r"task.sudoku_blanks must be in \[1, 12\]"):
        load_config("sudoku-tiny", ["task.sudoku_blanks=13"])
    with pytest.raises(ConfigError, match="task.sudoku_size must be 4 or 6 or 9"):
        load_config("sudoku-tiny", ["task.sudoku_size=5"])
    with pytest.raises(ConfigError, match="solver.sudoku_cell_choice must be"):
        load_config("sudoku-tiny", ["solver.sudoku_cell_choice=random"])
    with pytest.raises(ConfigError, match="solver.sudoku_max_children"):
        load_config("sudoku-tiny", ["solver.sudoku_max_children=1"])
    for preset in ("sudoku-tiny", "sudoku-cpu"):
        assert load_config(preset).task.name == "sudoku" and get_task(load_config(preset)).name == "sudoku"


# ---------------------------------------------------------------------------- the verifier

PUZZLE = Puzzle(4, (1, 0, 3, 0, 0, 4, 0, 2, 2, 0, 0, 0, 0, 0, 2, 1))
ANSWER = "1234 3412 2143 4321"


def test_the_verifier_accepts_the_solution_and_says_what_is_wrong_otherwise():
    assert count_solutions(PUZZLE.givens, 4) == 1
    assert TASK.verify(PUZZLE, f"Grid: {grid_text(PUZZLE.givens, 4)}\nSolved: {ANSWER}\n").answer == tuple(ANSWER.split())
    reasons = {
        "Solved: 3214 1432 2143 4321": "r1c1 holds 3, but its given is 1",
        "Solved: 1234 3412 2143 0321": "r4c1 holds 0",
        "Solved: 1234 3412 2143 4351": "r4c3 holds 5",
        "Solved: 1234 3412 2143 4311": "r4c3 holds 1, but its given is 2",
        "Solved: 1434 3412 2143 4321": "row 1 repeats a digit",
        "Solved: 1234 3412 2341 4321": "column 2 repeats a digit",
        "Solved: 1234 3412 2143": "not 4 rows of 4 digits",
        f"Solved: {ANSWER}\nPlace r1c1=1": "does not end with a 'Solved: ' line",
        f"<Sub Searches>\n<Solved in Sub Search 0> {ANSWER}\n<End Sub Searches>": "does not end with",
        "": "does not end with",
    }
    for output, reason in reasons.items():
        verdict = TASK.verify(PUZZLE, output)
        assert not verdict.ok and reason in verdict.reason, (output, verdict)
    assert TASK.claimed_answer(f"x\nSolved: {ANSWER}") == tuple(ANSWER.split()) and TASK.claimed_answer("x") is None


def test_every_other_grid_fails():
    """The puzzle has one solution, so changing any one cell of it (to any digit) must fail."""
    cells = [int(d) for d in ANSWER.replace(" ", "")]
    for cell in range(16):
        for digit in range(10):
            if digit != cells[cell]:
                wrong = cells[:cell] + [digit] + cells[cell + 1:]
                assert not TASK.verify(PUZZLE, "Solved: " + grid_text(wrong, 4)).ok


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=200),
                 st.lists(st.sampled_from(["Solved: ", "1234", "0", "9", " ", "\n", "Grid: ", "Place r1c1=1", ANSWER]),
                          max_size=30).map("".join),
                 st.binary(max_size=50), st.none(), st.integers()))
def test_the_verifier_never_raises(garbage):
    assert TASK.verify(PUZZLE, garbage).ok in (True, False)
    if isinstance(garbage, str):
        TASK.claimed_answer(garbage)


# ---------------------------------------------------------------------------- the solvers' traces


def _runs(count=40, size=4, blanks=10, **solver):
    task = _task(size, blanks, **solver)
    out = []
    for i, puzzle in enumerate(_puzzles(count, size, blanks)):
        for method in ("sosp", "apr"):
            out.append((task, puzzle, method, task.solve(puzzle, method, problem_rng(0, method, i))))
    return out


@pytest.mark.parametrize("size, blanks, choice", [(4, 10, "first_blank"), (4, 12, "most_constrained"),
                                                  (6, 26, "most_constrained")])
def test_every_solver_run_solves_and_tokenizes_round_trip(size, blanks, choice):
    for task, puzzle, method, run in _runs(20, size, blanks, sudoku_cell_choice=choice):
        assert run.solved and task.verify(puzzle, run.main_calls[-1]).ok
        assert run.main_calls[0].startswith(task.prompt(puzzle, method) + "\n")
        for thread in run.threads():
            prompt_ids = encode(TOKENIZER, thread.prompt)
            for text in thread.main_calls:
                ids = encode(TOKENIZER, text)
                assert decode(TOKENIZER, ids) == text and TOKENIZER.unk_token_id not in ids
                assert ids[:len(prompt_ids)] == prompt_ids


def test_lines_are_few_tokens():
    """Digits are single tokens and each line's words one phrase: a 4x4 grid line is 20 tokens, a placement 6."""
    assert len(encode(TOKENIZER, "Grid: 1030 0401 2000 0012")) == 20
    assert len(encode(TOKENIZER, "Place r1c2=4")) == 6 and len(encode(TOKENIZER, "Backtrack to r3c4")) == 4
    assert len(encode(TOKENIZER, "<Start Sub Search 1> Place r2c1=3")) == 8
    assert all(len(encode(TOKENIZER, phrase)) == 1 for phrase in SudokuTask.trace_phrases)


def test_first_blank_branches_and_backtracks_and_apr_spawns():
    runs = _runs(40, 4, 12, sudoku_cell_choice="first_blank")
    sosp = [run.main_calls[0] for _, _, method, run in runs if method == "sosp"]
    assert sum("Backtrack to r" in text for text in sosp) > 10 and all(CALL_OPEN not in text for text in sosp)
    assert sum(bool(run.sub_calls) for _, _, method, run in runs if method == "apr") > 30
    # most constrained first needs no branching on 4x4 puzzles with one solution
    assert not any("Branch r" in run.main_calls[0] for *_, run in _runs(40, 4, 12))


# ---------------------------------------------------------------------------- spawn and join


def _check_round_trip(task, run):
    """Executing the solver's own spawn blocks reproduces its child prompts and its join texts, byte for byte."""
    for k, spawn_children in enumerate(run.sub_calls):
        parent_output = run.main_calls[k].rstrip("\n")  # the runtime stops at the closing marker
        assert ends_with_spawn(parent_output)
        spawn = task.parse_spawn(parent_output)
        assert not isinstance(spawn, SpawnError), spawn
        assert [task.child_prompt(c) for c in spawn.children] == [child.prompt for child in spawn_children]
        results = [task.child_result(child.main_calls[-1].rstrip("\n")) for child in spawn_children]
        joined = task.join_text(spawn, results)
        assert run.main_calls[k + 1].startswith(joined) and joined.endswith(JOIN_CLOSE + "\n")
        for child in spawn_children:
            _check_round_trip(task, child)


@pytest.mark.parametrize("depth", [1, 2])
def test_spawns_round_trip(depth):
    runs = [(task, run) for task, _, method, run in _runs(40, 4, 12, sudoku_cell_choice="first_blank",
                                                          max_spawn_depth=depth) if method == "apr"]
    assert sum(bool(run.sub_calls) for _, run in runs) > 30
    for task, run in runs:
        _check_round_trip(task, run)
    nested = [child for _, run in runs for spawn in run.sub_calls for child in spawn if child.sub_calls]
    assert bool(nested) == (depth == 2)


class ReplayClient:
    """Answers like `apr-ds serve engine.replay_file=...` without a server: the next token is the one that follows the
    whole context in the recorded texts, EOS where none does; generation stops at EOS or a stop string."""

    def __init__(self, texts):
        self.trie = {}
        for text in texts:
            node = self.trie
            for token in [TOKENIZER.bos_token_id] + encode(TOKENIZER, text) + [TOKENIZER.eos_token_id]:
                node = node.setdefault(token, {})

    async def generate_tokens(self, context, sampling):
        node, out = self.trie, []
        for token in context:
            node = node.get(token, {})
        while len(out) < sampling["max_new_tokens"]:
            token = next(iter(node), TOKENIZER.eos_token_id)
            out.append(token)
            node = node.get(token, {})
            if token == TOKENIZER.eos_token_id or decode(TOKENIZER, out).endswith(tuple(sampling.get("stop", []))):
                return SimpleNamespace(output_ids=out, logprobs=[0.0] * len(out), finish_reason="stop",
                                       weight_version="0", cached_tokens=0)
        return SimpleNamespace(output_ids=out, logprobs=[0.0] * len(out), finish_reason="length", weight_version="0",
                               cached_tokens=0)


def test_the_runtime_rebuilds_the_solver_call_tree():
    """The runtime (`ProgramRunner`) runs the solver's APR sequences through the task: the same threads, prompts and
    final texts, and the strict verifier scores the program as solved."""
    from apr_ds.rollout.runtime import ProgramRunner
    runs = [(puzzle, run) for _, puzzle, method, run in _runs(12, 4, 12, sudoku_cell_choice="first_blank")
            if method == "apr" and run.sub_calls]
    assert len(runs) >= 8
    texts = [text for _, run in runs for thread in run.threads() for text in thread.main_calls]
    runner = ProgramRunner(ReplayClient(texts), TOKENIZER, TASK, RolloutConfig(max_context=1024, check_spawned_numbers=True))

    async def run_all():
        return await asyncio.gather(*[runner.run(puzzle, "apr") for puzzle, _ in runs])
    for trajectory, (_, run) in zip(asyncio.run(run_all()), runs):
        assert trajectory.correct, trajectory.reason
        solver_threads = run.threads()
        assert len(trajectory.threads) == len(solver_threads)
        assert [t.prompt for t in trajectory.threads] == [t.prompt for t in solver_threads]
        assert trajectory.root.text == run.main_calls[-1] and len(trajectory.root.spawns) == len(run.sub_calls)


PARENT = "Grid: 1200 0000 0000 0000\nPlace r1c3=3\nBranch r1c4: 4\n"
BLOCK = f"{CALL_OPEN}\n<Start Sub Search 0> Place r2c1=3\n<Start Sub Search 1> Place r2c1=4\n{CALL_CLOSE}"


def test_parse_a_spawn_and_build_child_prompts():
    spawn = TASK.parse_spawn(PARENT + BLOCK + "\n")
    assert spawn and spawn.prefix == PARENT
    assert [TASK.child_prompt(c) for c in spawn.children] == ["Grid: 1230 3000 0000 0000", "Grid: 1230 4000 0000 0000"]
    assert TASK.child_prompt(spawn.children[0], token_budget=512) == "Token Budget: 512 Grid: 1230 3000 0000 0000"
    assert TASK.child_result("Grid: 1230 3000 0000 0000\nPlace r1c4=4\nSolved: 1234 3412 2143 4321\n") == ANSWER
    assert TASK.child_result("Grid: 1230 3000 0000 0000\nDead end at r2c2\nNo solution") is None
    assert TASK.join_text(spawn, [None, ANSWER]) == PARENT + (
        f"<Sub Searches>\n<No Solution in Sub Search 0>\n<Solved in Sub Search 1> {ANSWER}\n<End Sub Searches>\n")


@pytest.mark.parametrize("text, kind", [
    (PARENT, "not_a_spawn"),
    (PARENT + BLOCK.rsplit("\n", 1)[0], "truncated"),
    (PARENT.replace("Grid: 1200 0000 0000 0000\n", "") + BLOCK, "unknown_node"),
    (PARENT + BLOCK.replace("r2c1=3", "r1c1=3"), "wrong_numbers"),  # a given's cell
    (PARENT + BLOCK.replace("r2c1=3", "r2c1=1"), "wrong_numbers"),  # its column has a 1
    (PARENT + BLOCK.replace("r2c1=3", "r2c1=4"), "duplicate_child"),
    (PARENT + BLOCK.replace("Sub Search 1>", "Sub Search 3>"), "bad_numbering"),
    (PARENT + BLOCK.replace("r2c1=3", "r5c1=3"), "bad_line"),
    (PARENT + BLOCK.replace("r2c1=3", "r2c1=7"), "bad_line"),
    (PARENT + BLOCK.replace("<Start Sub Search 0> ", ""), "bad_line"),
    (PARENT + f"{CALL_OPEN}\n{CALL_CLOSE}", "empty"),
])
def test_malformed_spawns_are_typed_errors(text, kind):
    result = TASK.parse_spawn(text)
    assert isinstance(result, SpawnError) and result.kind == kind, result


def test_without_the_numbers_check_a_child_starts_from_the_grid_its_placement_makes():
    spawn = TASK.parse_spawn(PARENT + BLOCK.replace("r2c1=3", "r2c1=1"), check_numbers=False)
    assert TASK.child_prompt(spawn.children[0]) == "Grid: 1230 1000 0000 0000"
    backtracked = PARENT + "Place r2c1=3\nBacktrack to r1c3\nPlace r1c3=4\n" + BLOCK.replace("r2c1=4", "r2c2=4")
    assert [TASK.child_prompt(c) for c in TASK.parse_spawn(backtracked).children] == [
        "Grid: 1240 3000 0000 0000", "Grid: 1240 0400 0000 0000"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(list("0123456789 =c:\n") + ["Grid: ", "Place r", "Branch r", "Backtrack to r", CALL_OPEN,
                                                             CALL_CLOSE, "<Start Sub Search ", "> Place r", PARENT, BLOCK,
                                                             "Solved: ", ANSWER]), max_size=80).map("".join))
def test_the_task_never_raises_on_garbage(text):
    result = TASK.parse_spawn(text)
    assert isinstance(result, SpawnError) or result.children
    TASK.child_result(text)
    TASK.wrong_spans(text), TASK.failed_checks(text), TASK.line_kinds(text), TASK.line_diagnostics([text])


# ---------------------------------------------------------------------------- per-line checks

GRID = "Grid: 1200 0000 0000 0000\n"


@pytest.mark.parametrize("lines, failed", [
    ("Place r1c4=1\n", {1: ["row"]}),
    ("Place r4c1=1\n", {1: ["column"]}),
    ("Place r2c2=1\n", {1: ["box"]}),
    ("Place r1c1=3\n", {1: ["given"]}),
    ("Place r1c3=3\nPlace r1c3=4\n", {2: ["blank"]}),
    ("Place r1c3=3\nPlace r1c4=3\n", {2: ["row", "box"]}),
    ("Branch r1c3: 3 4\nBranch r1c3: 3\nBranch r2c1: 3 4\n", {2: ["candidates"]}),
    ("Dead end at r1c3\nPlace r3c2=3\nPlace r4c2=4\nDead end at r2c2\n", {1: ["candidates"]}),
    ("Backtrack to r2c2\nPlace r2c2=3\nBacktrack to r2c2\nBacktrack to r2c2\n", {1: ["backtrack"], 4: ["backtrack"]}),
    ("Place r5c1=2\nPlace r1c3=\nPlace r1c4=3", {1: ["format"], 2: ["format"]}),  # the cut last line is not judged
])
def test_line_checks_flag_what_breaks_the_rules(lines, failed):
    assert failed_checks(GRID + lines) == failed


def test_wrong_spans_are_the_wrong_part_of_the_line():
    text = GRID + "Place r1c4=1\nPlace r1c1=3\nBranch r1c3: 3\nBacktrack to r4c4\nPlace r9c9=9\n"
    assert [text[a:b] for a, b in wrong_spans(text)] == ["1", "1c1", "3", "4c4", "Place r9c9=9"]
    prefixed = "Token Budget: 512 " + GRID.replace("1200", "12x0")
    assert [prefixed[a:b] for a, b in wrong_spans(prefixed)] == ["Grid: 12x0 0000 0000 0000"]


def test_solver_traces_pass_every_line_check():
    texts = [text for _, _, _, run in _runs(30, 4, 12, sudoku_cell_choice="first_blank")
             for thread in run.threads() for text in thread.main_calls]
    assert all(failed_checks(text) == {} for text in texts)
    diagnostics = line_diagnostics(texts)
    assert all(d["right"] == 1.0 and d["lines"] > 0 for d in diagnostics.values()), diagnostics


def test_line_kinds():
    spawned = TASK.parse_spawn(PARENT + BLOCK)
    text = TASK.join_text(spawned, [None, ANSWER]) + "Solved: " + ANSWER + "\n"
    assert TASK.line_kinds("Sub Call Budget: 2 " + text) == ["state", "place", "branch"] + ["join"] * 4 + ["solved"]
    assert TASK.line_kinds(GRID + "Dead end at r2c1\nBacktrack to r1c3\nNo solution\nhello") == [
        "state", "dead_end", "backtrack", "no_solution", "other"]
    assert set(TASK.line_kinds(PARENT + BLOCK)) <= set(TASK.line_kind_names) | {"spawn"}


def test_rl_line_marks_accept_the_domain_tokenizer():
    from apr_ds.rollout.line_marks import LineMarks
    marks = LineMarks(TOKENIZER, TASK)
    ids = encode(TOKENIZER, GRID + "Place r1c4=1\n")
    assert marks(ids, len(encode(TOKENIZER, GRID))).tolist() == [0, 0, 0, 0, 0, 1, 0]  # the repeated digit


# ---------------------------------------------------------------------------- the pipeline


@pytest.mark.slow  # training, two evaluation servers and an RL job: about a minute and a half on 2 cores
def test_the_pipeline_runs_on_sudoku_tiny(apr_ds_cli, tmp_path):
    """apr-ds data, a few SFT steps, eval (apr and sosp), report, 2 RL steps and the viewer, as subprocesses on the
    sudoku-tiny preset."""
    def run(*argv):
        proc = subprocess.run(apr_ds_cli + list(argv), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc
    common = ["--preset", "sudoku-tiny", f"run_dir={tmp_path}"]
    run("data", *common, "task.num_train=120", "task.num_val=16", "task.num_test=4", "task.num_test_unseen_targets=4",
        "data.workers=1")
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["task"] == "sudoku" and manifest["methods"]["apr"]["train"]["children_per_spawn"] >= 2
    run("sft", *common, "sft.method=apr", "sft.steps=4", "sft.global_batch=8", "sft.deepspeed.micro_batch=4",
        "sft.eval_every=4", "sft.eval_sequences=8", "sft.probe_problems=2", "sft.checkpoint.save_every=4")
    model = tmp_path / "sft" / "apr" / "hf"
    for method in ("apr", "sosp"):
        run("eval", *common, "--model", str(model), "--method", method, "eval.num_problems=4", "rollout.max_context=96")
        results = json.loads((tmp_path / "eval" / f"{method}.json").read_text())["settings"][0]
        assert results["problems"] == 4 and set(results["lines"]) >= {"row", "column", "box", "given", "format"}
        assert len((tmp_path / "eval" / f"{method}.trajectories.jsonl").read_text().splitlines()) == 4
    run("report", str(tmp_path), "--out", str(tmp_path / "report"))
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "view" / "apr.html").is_file()
    run("rl", *common, f"rl.init_model={model}", "rl.method=apr", "rl.steps=2", "rl.prompts_per_step=2",
        "rl.group_size=2", "rollout.max_context=128", "rl.checkpoint.save_every=2", "rl.keep_programs=2",
        "rl.line_penalty=0.5")
    rows = [json.loads(line) for line in (tmp_path / "rl" / "scalars.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and (tmp_path / "rl" / "hf" / "config.json").is_file()
    run("view", str(tmp_path / "rl"), "--out", str(tmp_path / "rl.html"))  # the programs RL kept, read as Sudoku
    assert "sudoku" in (tmp_path / "rl.html").read_text()

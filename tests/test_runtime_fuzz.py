"""Fuzzing: malformed model output never crashes the runner.

10k random and mutated outputs go through everything the runtime does with a thread's text (spawn
detection and parsing, child prompts, child results, joins, the verifier). Then whole programs run
through `ProgramRunner` with a scripted client: a test double standing in for the server so that
arbitrary (mutated) model outputs can be injected; the real server path is covered by test_runtime.py.
"""

import asyncio
import random

from apr_ds.config import RolloutConfig, SolverConfig, load_config
from apr_ds.data.tokenizer import build_tokenizer
from apr_ds.lang import SpawnError, ends_with_spawn
from apr_ds.rollout.client import Generation
from apr_ds.rollout.runtime import ProgramRunner
from apr_ds.tasks import get_task
from apr_ds.tasks.countdown import Problem
from apr_ds.tasks.countdown_solvers import solve_apr
from apr_ds.tasks.task import problem_rng

TASK = get_task(load_config("tiny"))
parse_spawn, child_result, join_text, verify = TASK.parse_spawn, TASK.child_result, TASK.join_text, TASK.verify

PIECES = ["Moving to Node #", "Current State: ", "Generated Node #", "Exploring Operation: ", ", Resulting Numbers: ",
          " Operation: ", ", Operations: ", "<Calling Sub Searches>", "<End Calling Sub Searches>", "<Sub Searches>",
          "<End Sub Searches>", "<Start Sub Search ", " at level 1> Moving to Node #", " equal: Goal Reached",
          "Goal Reached", "\n", "\n", ",", "0", "1", "2", "17", "24", "[", "]", "'", "+", "*", "-", "/", "=", ":", " ", "\x00", "é"]


def _solver_texts(count=120):
    cfg = SolverConfig(apr_max_beam=6, apr_max_child_beam=8)
    out = []
    for i in range(count):
        rng = random.Random(i)
        problem = Problem(tuple(rng.randint(1, 20) for _ in range(4)), rng.randint(10, 30))
        run = solve_apr(problem, cfg, problem_rng(1, "apr", i))
        out += [(problem, text.rstrip("\n")) for thread in run.threads() for text in thread.main_calls]
    return out


def mutate(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    kind = rng.randrange(7)
    i = rng.randrange(len(lines))
    if kind == 0:
        del lines[i]
    elif kind == 1:
        lines.insert(i, lines[rng.randrange(len(lines))])
    elif kind == 2:
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == 3:
        digits = [k for k, c in enumerate(lines[i]) if c.isdigit()]
        if digits:
            k = rng.choice(digits)
            lines[i] = lines[i][:k] + str(rng.randrange(10)) + lines[i][k + 1:]
    elif kind == 4:
        return text[:rng.randrange(len(text) + 1)]
    elif kind == 5:
        lines.insert(i, rng.choice(["<Calling Sub Searches>", "<End Calling Sub Searches>", "<Sub Searches>",
                                    "<Start Sub Search 0 at level 1> Moving to Node #0,0", "27,27 equal: Goal Reached"]))
    else:
        lines[i] = "".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 12)))
    return "\n".join(lines)


def test_ten_thousand_random_and_mutated_outputs():
    rng = random.Random(0)
    base = _solver_texts()
    spawns = errors = 0
    for n in range(10_000):
        if n % 2:
            text = "".join(rng.choice(PIECES) for _ in range(rng.randrange(0, 60)))
            problem = Problem((3, 4, 5, 6), 24)
        else:
            problem, text = rng.choice(base)
            for _ in range(rng.randrange(1, 4)):
                text = mutate(text, rng)
        ends_with_spawn(text)
        spawn = parse_spawn(text)
        if isinstance(spawn, SpawnError):
            errors += 1
            assert spawn.kind and spawn.message
        else:
            spawns += 1
            assert spawn.children and all(TASK.child_prompt(c).startswith("Moving to Node #") for c in spawn.children)
            results = [child_result(mutate(text, rng)) for _ in spawn.children]
            assert join_text(spawn, results).startswith(spawn.prefix)
        child_result(text)
        assert verify(problem, text).ok in (True, False)
    assert spawns > 100 and errors > 5000  # both paths were exercised


class ScriptedClient:
    """Test double for the server (see module docstring). It knows the solver's continuation of every context
    of a few solver runs and answers with it, mutated half of the time; unknown contexts get random pieces."""

    def __init__(self, tokenizer, runs, rng):
        self.tokenizer, self.rng = tokenizer, rng
        self.script = {}
        for run in runs:
            for thread in run.threads():
                for k, text in enumerate(thread.main_calls):
                    cut = len(thread.prompt) if k == 0 else text.index("<End Sub Searches>\n") + len("<End Sub Searches>\n")
                    self.script[text[:cut]] = text[cut:]

    async def generate_tokens(self, input_ids, sampling_params=None, rid=None, return_logprob=True):
        await asyncio.sleep(0)
        context = self.tokenizer.decode(input_ids[1:])
        text = self.script.get(context)
        if text is None:
            text = "".join(self.rng.choice(PIECES) for _ in range(self.rng.randrange(1, 40)))
        elif self.rng.random() < 0.5:
            text = mutate(text, self.rng)
        limit = sampling_params["max_new_tokens"]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        finish = "stop" if len(ids) <= limit else "length"
        ids = ids[:limit]
        return Generation(ids, [0.0] * len(ids), finish, None, "v0", len(input_ids), 0, "", {})


def test_whole_programs_with_mutated_outputs_never_crash():
    rng = random.Random(1)
    problem = Problem((3, 4, 5, 6), 24)
    cfg = SolverConfig(apr_max_beam=6, apr_max_child_beam=8)
    runs = [solve_apr(problem, cfg, problem_rng(2, "apr", i)) for i in range(30)]
    tokenizer = build_tokenizer()
    runner = ProgramRunner(ScriptedClient(tokenizer, runs, rng), tokenizer, get_task(load_config("tiny")),
                           RolloutConfig(max_context=1500, max_spawns=3, max_children=6, timeout_s=30))

    async def run_all():
        return await asyncio.gather(*[runner.run(problem, "apr") for _ in range(400)])
    trajectories = asyncio.run(run_all())
    statuses = {t.status for traj in trajectories for t in traj.threads}
    assert statuses <= {"done", "failed", "truncated"} and "failed" in statuses and "done" in statuses
    for traj in trajectories:
        assert traj.correct == (traj.root.status == "done" and verify(problem, traj.root.text).ok)
        for thread in traj.threads:
            assert thread.status != "failed" or thread.error
            assert all(seg.context_len <= 1500 for seg in thread.segments)
    assert sum(len(t.threads) > 1 for t in trajectories) > 50
    assert sum(t.correct for t in trajectories) > 10

"""The runtime and the data pipeline with a byte-level BPE tokenizer whose merges cross line ends (tests/bpe.py), where
a prompt's tokens are not a prefix of its continuation's tokens and a token can run past a stop string.

A text-level replay client stands in for a model that writes the solver's traces: it answers the text that follows
the request's context in the recorded calls, encoded as it comes (so its token boundaries are its own, as a
model's are), and stops after the token that completes a stop string, as SGLang does.
"""

import asyncio
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from apr_ds.config import Config, RolloutConfig
from apr_ds.data.sequences import common_prefix_len
from apr_ds.tasks import get_task
from apr_ds.tasks.task import problem_rng
from bpe import train_bpe

TASK = get_task(Config())


def solver_runs(count: int) -> list:
    """(problem, APR solver run) of the first `count` problems whose run spawns."""
    from apr_ds.tasks.countdown import Problem
    runs, index = [], 0
    rng_problems = problem_rng(7, "problems", 0)
    while len(runs) < count:
        target, nums = rng_problems.randint(10, 30), [rng_problems.randint(1, 20) for _ in range(3)]
        problem = Problem(target=target, nums=nums)
        run = TASK.solve(problem, "apr", problem_rng(0, "apr", index))
        index += 1
        if run.sub_calls and run.solved:
            runs.append((problem, run))
    return runs


class TextReplayClient:
    def __init__(self, tokenizer, texts: list[str]):
        self.tokenizer, self.texts, self.requests = tokenizer, texts, []

    async def generate_tokens(self, context, sampling):
        seen = self.tokenizer.decode(context[1:])
        recorded = next((t for t in self.texts if t.startswith(seen) and len(t) > len(seen)), None)
        rest = self.tokenizer(recorded[len(seen):], add_special_tokens=False)["input_ids"] if recorded else []
        out, finish = [], "length"
        for token in rest + [self.tokenizer.eos_token_id]:
            out.append(token)
            if token == self.tokenizer.eos_token_id or any(s in self.tokenizer.decode(out) for s in sampling.get("stop", ())):
                finish = "stop"
                break
        cached = max((common_prefix_len(context, r) for r in self.requests), default=0)
        self.requests.append(list(context) + out)
        return SimpleNamespace(output_ids=out, logprobs=[0.0] * len(out), finish_reason=finish, weight_version="0",
                               cached_tokens=cached)


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    runs = solver_runs(12)
    texts = [text for _, run in runs for thread in run.threads() for text in thread.main_calls]
    from transformers import AutoTokenizer
    directory = train_bpe(texts * 3, tmp_path_factory.mktemp("bpe"))
    return AutoTokenizer.from_pretrained(directory), runs, texts, directory


def test_the_tokenizer_really_merges_across_lines(bpe):
    tokenizer, _, texts, _ = bpe
    spans = [tokenizer.decode([i]) for i in tokenizer(texts[0], add_special_tokens=False)["input_ids"]]
    assert any("\n" in s and s.strip("\n") for s in spans), spans[:20]
    prompt = TASK.prompt(bpe[1][0][0], "apr")
    whole = tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    alone = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert whole[:len(alone)] != alone  # a prompt's tokens are not a prefix of its continuation's here


def test_programs_run_as_the_solver_wrote_them_and_the_parent_keeps_its_tokens(bpe):
    from apr_ds.rollout.runtime import ProgramRunner
    tokenizer, runs, texts, _ = bpe
    client = TextReplayClient(tokenizer, texts)
    runner = ProgramRunner(client, tokenizer, TASK, RolloutConfig(max_context=2048))

    async def run_all():
        return [await runner.run(problem, "apr") for problem, _ in runs]  # one at a time: the cache is per program
    for trajectory, (_, run) in zip(asyncio.run(run_all()), runs):
        assert trajectory.correct, trajectory.reason
        assert trajectory.root.text == run.main_calls[-1] and len(trajectory.threads) == len(run.threads())
        parent = trajectory.root.segments
        for before, after in zip(parent, parent[1:]):
            # after the join, the parent's next context starts with everything it was given before, token for token,
            # and with the tokens it sampled up to the spawn block, so the prefix cache covers them
            assert after.prompt_ids[:len(before.prompt_ids)] == before.prompt_ids
            sampled = before.prompt_ids + before.output_ids
            assert after.cached_tokens >= len(before.prompt_ids)
            assert common_prefix_len(after.prompt_ids, sampled) >= len(before.prompt_ids)
        for thread in trajectory.threads:
            for segment in thread.segments:  # what the learner trains on is what the server sent
                assert any(request[:len(segment.prompt_ids) + len(segment.output_ids)] ==
                           segment.prompt_ids + segment.output_ids for request in client.requests)


def test_a_token_running_past_the_stop_string_is_cut_at_it(bpe):
    """The model writes the spawn block and, in the same token, the start of a join block it should not write."""
    from apr_ds.rollout.runtime import ProgramRunner
    tokenizer, runs, texts, _ = bpe
    problem, run = runs[0]
    first = run.main_calls[0]
    assert first.rstrip("\n").endswith("<End Calling Sub Searches>")

    class Overrunning(TextReplayClient):
        async def generate_tokens(self, context, sampling):
            answer = await super().generate_tokens(context, sampling)
            if self.tokenizer.decode(answer.output_ids).rstrip("\n").endswith("<End Calling Sub Searches>"):
                extra = self.tokenizer("\n<Sub Searches>", add_special_tokens=False)["input_ids"]
                last = self.tokenizer.decode(answer.output_ids[-1:]) + "\n<Sub Searches>"
                merged = self.tokenizer(last, add_special_tokens=False)["input_ids"]
                answer.output_ids = answer.output_ids[:-1] + (merged if len(merged) == 1 else answer.output_ids[-1:] + extra)
                answer.logprobs = [0.0] * len(answer.output_ids)
            return answer
    runner = ProgramRunner(Overrunning(tokenizer, texts), tokenizer, TASK, RolloutConfig(max_context=2048))
    trajectory = asyncio.run(runner.run(problem, "apr"))
    assert trajectory.correct, trajectory.reason
    assert "<Sub Searches>\n<Sub Searches>" not in trajectory.root.text


@pytest.mark.slow  # data and a few SFT steps on the BPE tokenizer: about half a minute
def test_data_and_sft_take_a_bpe_tokenizer_directory(bpe, tmp_path):
    _, _, _, directory = bpe
    def apr_ds(*args):
        proc = subprocess.run([sys.executable, "-m", "apr_ds.cli", *map(str, args)], capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    apr_ds("data", "--preset", "tiny", f"run_dir={tmp_path}", "task.num_train=200", "data.workers=1",
           f"data.tokenizer={directory}")
    from transformers import AutoTokenizer
    saved = AutoTokenizer.from_pretrained(tmp_path / "data" / "tokenizer")
    row = json.loads((tmp_path / "data" / "sequences" / "apr" / "train.jsonl").read_text().splitlines()[0])
    assert saved.decode(saved(row["text"], add_special_tokens=False)["input_ids"]) == row["text"]
    apr_ds("sft", "--preset", "tiny", f"run_dir={tmp_path}", "model.family=qwen3", "sft.method=apr", "sft.steps=4",
           "sft.eval_every=4", "sft.checkpoint.save_every=4")
    assert AutoTokenizer.from_pretrained(tmp_path / "sft" / "apr" / "hf").vocab_size == saved.vocab_size

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
from apr_ds.lang import CALL_CLOSE, CALL_OPEN, JOIN_OPEN
from bpe import train_bpe, train_sentencepiece_like

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


def run_programs(tokenizer, runs, texts, client=None):
    from apr_ds.rollout.runtime import ProgramRunner
    client = client or TextReplayClient(tokenizer, texts)
    runner = ProgramRunner(client, tokenizer, TASK, RolloutConfig(max_context=2048))

    async def run_all():
        return [await runner.run(problem, "apr") for problem, _ in runs]  # one at a time: the cache is per program
    return asyncio.run(run_all()), client


def tokens_before(tokenizer, ids: list[int], chars: int) -> int:
    """How many of `ids` (after <s>) lie wholly within the first `chars` characters they spell."""
    text = tokenizer.decode(ids[1:])
    return max(k for k in range(1, len(ids) + 1)
               if len(tokenizer.decode(ids[1:k])) <= chars and text.startswith(tokenizer.decode(ids[1:k])))


def test_programs_run_as_the_solver_wrote_them_and_the_parent_keeps_its_tokens(bpe):
    tokenizer, runs, texts, _ = bpe
    trajectories, client = run_programs(tokenizer, runs, texts)
    for trajectory, (_, run) in zip(trajectories, runs):
        assert trajectory.correct, trajectory.reason
        assert trajectory.root.text == run.main_calls[-1] and len(trajectory.threads) == len(run.threads())
        parent = trajectory.root.segments
        for before, after in zip(parent, parent[1:]):
            # after the join the parent's context keeps, token for token, everything it was given before and every
            # token it sampled that lies wholly before its spawn block, so the prefix cache covers all of them
            sampled = before.prompt_ids + before.output_ids
            spawn_at = tokenizer.decode(sampled[1:]).rfind(CALL_OPEN)
            kept = common_prefix_len(after.prompt_ids, sampled)
            assert kept >= tokens_before(tokenizer, sampled, spawn_at) > len(before.prompt_ids)
            assert after.cached_tokens >= kept
        for thread in trajectory.threads:
            for segment in thread.segments:  # what the learner trains on is what the server sent
                assert any(request[:len(segment.prompt_ids) + len(segment.output_ids)] ==
                           segment.prompt_ids + segment.output_ids for request in client.requests)


def test_a_sentencepiece_tokenizer_joins_without_inventing_a_word_boundary(bpe, tmp_path):
    """Encoding a join's new text on its own would start it with a word boundary ("▁"): "< Sub Searches>"."""
    from transformers import AutoTokenizer
    _, runs, texts, _ = bpe
    tokenizer = AutoTokenizer.from_pretrained(train_sentencepiece_like(texts * 3, tmp_path / "sp"))
    piece = tokenizer(texts[0][:50], add_special_tokens=False)["input_ids"] + \
        tokenizer(texts[0][50:], add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(piece) != texts[0]  # two encodes are not one here
    trajectories, _ = run_programs(tokenizer, runs, texts)
    for trajectory, (_, run) in zip(trajectories, runs):
        assert trajectory.correct, trajectory.reason
        assert trajectory.root.text == run.main_calls[-1]
        for before, after in zip(trajectory.root.segments, trajectory.root.segments[1:]):
            assert tokenizer.decode(after.prompt_ids[1:]).count(" <") == 0


def test_a_token_running_past_the_stop_string_is_cut_at_it(bpe, tmp_path):
    """The model writes the spawn block's closing marker and, in the same token, the start of a join block."""
    from transformers import AutoTokenizer
    _, runs, texts, directory = bpe
    tokenizer = AutoTokenizer.from_pretrained(directory)
    straddle = ">\n" + JOIN_OPEN
    tokenizer.add_tokens([straddle])

    class Overrunning(TextReplayClient):
        async def generate_tokens(self, context, sampling):
            answer = await super().generate_tokens(context, sampling)
            text = self.tokenizer.decode(answer.output_ids).rstrip("\n")
            if text.endswith(CALL_CLOSE):
                answer.output_ids = self.tokenizer(text + "\n" + JOIN_OPEN, add_special_tokens=False)["input_ids"]
                assert self.tokenizer.decode(answer.output_ids[-1:]) == straddle  # one token across the stop
                answer.logprobs = [0.0] * len(answer.output_ids)
                self.overruns += 1
            return answer
    client = Overrunning(tokenizer, texts)
    client.overruns = 0
    trajectories, _ = run_programs(tokenizer, runs[:3], texts, client)
    assert client.overruns >= 3
    for trajectory, (_, run) in zip(trajectories, runs):
        assert trajectory.correct, trajectory.reason
        first = trajectory.root.segments[0]
        assert first.finish_reason == "stop" and straddle not in tokenizer.decode(first.output_ids)
        assert tokenizer.decode(first.prompt_ids[1:] + first.output_ids).endswith(CALL_CLOSE[:-1])
        assert trajectory.root.text == run.main_calls[-1]


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

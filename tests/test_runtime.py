"""The spawn/join runtime through the real server path: `apr-ds serve` in replay mode answers with the
solver's own sequences, and the runtime must rebuild the solver's whole call tree from them."""

import asyncio
import json

import pytest

from apr_ds.config import RolloutConfig, load_config
from apr_ds.rollout.client import RolloutClient
from apr_ds.rollout.runtime import ProgramRunner
from apr_ds.rollout.server_proc import ServerProcess
from apr_ds.tasks import get_task
from apr_ds.tasks.countdown import Problem


@pytest.fixture(scope="module")
def solver_data(tmp_path_factory):
    from apr_ds.data.build import build
    run_dir = tmp_path_factory.mktemp("run")
    cfg = load_config("tiny", [f"run_dir={run_dir}", "task.num_train=60", "task.num_val=5", "task.num_test=5",
                               "task.num_test_unseen_targets=5", "data.workers=1"])
    build(cfg)
    data = run_dir / "data"
    return cfg, data


def _load(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _pick(data, method, count, want_spawn):
    traces = _load(data / "traces" / method / "train.jsonl")
    problems = _load(data / "problems" / "train.jsonl")
    rows = _load(data / "sequences" / method / "train.jsonl")
    kept = {r["problem"] for r in rows}
    chosen = [i for i, t in enumerate(traces) if i in kept and bool(t["sub_calls"]) == want_spawn][:count]
    return chosen, traces, problems, [r for r in rows if r["problem"] in chosen]


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
    from apr_ds.engine.toy import save_random_model
    directory = tmp_path_factory.mktemp("toy")
    save_random_model(directory, max_position_embeddings=1024)
    return directory


async def _run_all(url, cfg, problems, method, rollout):
    from transformers import AutoTokenizer
    async with RolloutClient(url) as client:
        runner = ProgramRunner(client, AutoTokenizer.from_pretrained(str(cfg.model_dir)), get_task(cfg.config), rollout)
        return await asyncio.gather(*[runner.run(p, method) for p in problems])


class _Ctx:
    def __init__(self, config, model_dir):
        self.config, self.model_dir = config, model_dir


def _serve_replay(toy_model, tmp_path, rows):
    replay = tmp_path / "replay.jsonl"
    replay.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows))
    return ServerProcess.start_ours(str(toy_model), overrides=[f"engine.replay_file={replay}", "engine.num_threads=1"],
                                    log_path=str(tmp_path / "server.log")).wait_healthy()


def _check_tree(trajectory, thread_id, solver_run):
    """The runtime's thread and the solver's run agree: prompts, every join text, children, final text."""
    thread = trajectory.threads[thread_id]
    assert thread.prompt == solver_run["prompt"]
    assert thread.text == solver_run["main_calls"][-1]
    assert len(thread.spawns) == len(solver_run["sub_calls"])
    for k, (child_ids, solver_children) in enumerate(zip(thread.spawns, solver_run["sub_calls"])):
        # the prompt of the call after spawn k is the solver's next main call up to its join block
        resumed = thread.segments[k + 1].prompt_ids
        call = solver_run["main_calls"][k + 1]
        joined = call[:call.index("<End Sub Searches>\n") + len("<End Sub Searches>\n")]
        assert trajectory_decode(resumed) == joined
        assert [trajectory.threads[c].prompt for c in child_ids] == [c["prompt"] for c in solver_children]
        for c, solver_child in zip(child_ids, solver_children):
            _check_tree(trajectory, c, solver_child)


def trajectory_decode(ids):
    from apr_ds.data.tokenizer import build_tokenizer, decode
    return decode(build_tokenizer(), ids[1:])


def test_runtime_reproduces_the_solver_call_tree(solver_data, toy_model, tmp_path):
    cfg, data = solver_data
    chosen, traces, problems, rows = _pick(data, "apr", 8, want_spawn=True)
    assert len(chosen) >= 5
    rollout = RolloutConfig(max_context=1024, temperature=0.0)
    with _serve_replay(toy_model, tmp_path, rows) as server:
        trajectories = asyncio.run(_run_all(server.url, _Ctx(cfg, toy_model), [Problem.from_json(problems[i]) for i in chosen],
                                            "apr", rollout))
    for i, trajectory in zip(chosen, trajectories):
        _check_tree(trajectory, 0, traces[i])
        assert trajectory.correct == traces[i]["solved"], trajectory.reason
        assert trajectory.root.status == "done"
        # the parent's resumed call hits the prefix cache for its whole pre-spawn context
        root = trajectory.root
        for previous, resumed in zip(root.segments, root.segments[1:]):
            prefix = 0
            while prefix < len(previous.prompt_ids) + len(previous.output_ids) and prefix < len(resumed.prompt_ids) \
                    and (previous.prompt_ids + previous.output_ids)[prefix] == resumed.prompt_ids[prefix]:
                prefix += 1
            assert resumed.cached_tokens >= prefix - 1
    assert sum(t.correct for t in trajectories) >= 1
    assert any(len(t.threads) > 3 for t in trajectories)


def test_sequential_method_on_the_same_path(solver_data, toy_model, tmp_path):
    cfg, data = solver_data
    chosen, traces, problems, rows = _pick(data, "sosp", 5, want_spawn=False)
    with _serve_replay(toy_model, tmp_path, rows) as server:
        trajectories = asyncio.run(_run_all(server.url, _Ctx(cfg, toy_model), [Problem.from_json(problems[i]) for i in chosen],
                                            "sosp", RolloutConfig(max_context=1024)))
    for i, trajectory in zip(chosen, trajectories):
        assert len(trajectory.threads) == 1 and trajectory.root.text == traces[i]["main_calls"][0]
        assert trajectory.correct == traces[i]["solved"]
        assert trajectory.total_tokens() == trajectory.sequential_tokens() == trajectory.longest_thread()


def test_children_run_concurrently_or_one_after_another(solver_data, toy_model, tmp_path):
    """Both modes give the same tree; the sequential one never has two children in flight."""
    cfg, data = solver_data
    chosen, traces, problems, rows = _pick(data, "apr", 3, want_spawn=True)
    probs = [Problem.from_json(problems[i]) for i in chosen]
    with _serve_replay(toy_model, tmp_path, rows) as server:
        together = asyncio.run(_run_all(server.url, _Ctx(cfg, toy_model), probs, "apr", RolloutConfig(max_context=1024)))
        apart = asyncio.run(_run_all(server.url, _Ctx(cfg, toy_model), probs, "apr",
                                     RolloutConfig(max_context=1024, sequential_children=True)))
    for a, b in zip(together, apart):
        assert [t.text for t in a.threads] == [t.text for t in b.threads]
        for thread in b.threads:
            for spawn in thread.spawns:
                spans = sorted((b.threads[c].segments[0].start, b.threads[c].segments[-1].end) for c in spawn)
                assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))


def test_programs_cut_by_a_pause_in_abort_mode_go_on_from_where_they_were(solver_data, toy_model, tmp_path):
    """What a rollout rank does around each weight update: close the gate, pause (abort), continue, open the
    gate. Every aborted call is resumed from its partial output, and the programs end exactly as the solver's."""
    cfg, data = solver_data
    chosen, traces, problems, rows = _pick(data, "apr", 8, want_spawn=True)
    probs = [Problem.from_json(problems[i]) for i in chosen]

    async def main(url):
        from transformers import AutoTokenizer
        admit = asyncio.Event()
        admit.set()
        async with RolloutClient(url) as client:
            runner = ProgramRunner(client, AutoTokenizer.from_pretrained(str(toy_model)), get_task(cfg),
                                   RolloutConfig(max_context=1024), admit)
            programs = asyncio.gather(*[runner.run(p, "apr") for p in probs])
            pauses = 0
            while not programs.done() and pauses < 20:
                await asyncio.sleep(0.05)
                admit.clear()
                await client.pause_generation("abort")
                await client.flush_cache()  # nothing runs and nothing waits: the gate held every new request
                await client.continue_generation()
                admit.set()
                pauses += 1
            return await programs

    with ServerProcess.start_ours(str(toy_model), overrides=[f"engine.replay_file={_replay(tmp_path, rows)}",
                                                             "engine.num_threads=1", "engine.replay_compute=true"],
                                  log_path=str(tmp_path / "server.log")).wait_healthy() as server:
        trajectories = asyncio.run(main(server.url))
    aborted = [s for t in trajectories for th in t.threads for s in th.segments if s.finish_reason == "abort"]
    assert aborted, "no call was cut by a pause; the test proves nothing"
    for i, trajectory in zip(chosen, trajectories):
        assert trajectory.root.text == traces[i]["main_calls"][-1]
        assert trajectory.correct == traces[i]["solved"] and trajectory.root.status == "done"


def _replay(tmp_path, rows):
    replay = tmp_path / "replay.jsonl"
    replay.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows))
    return replay

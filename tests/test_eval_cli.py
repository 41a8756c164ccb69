"""`apr-ds eval` end to end as a subprocess: against a server it starts itself, and against a URL."""

import json
import subprocess
import sys

import pytest

from apr_ds.config import load_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from apr_ds.data.build import build
    from apr_ds.engine.toy import save_random_model
    run = tmp_path_factory.mktemp("run")
    build(load_config("tiny", [f"run_dir={run}", "task.num_train=40", "task.num_val=5", "task.num_test=6",
                               "task.num_test_unseen_targets=5", "data.workers=1"]))
    save_random_model(run / "model", max_position_embeddings=1024)
    return run


def _eval(run_dir, *args):
    cmd = [sys.executable, "-m", "apr_ds.cli", "eval", "--preset", "tiny", f"run_dir={run_dir}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_eval_starts_its_own_servers_and_sweeps_temperature(run_dir):
    proc = _eval(run_dir, "--model", str(run_dir / "model"), "--method", "apr", "rollout.max_context=96",
                 "eval.temperatures=[0.0,1.0]", "eval.servers=2", "--tag", "_random")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "eval" / "apr_random.json").read_text())
    assert len(results["urls"]) == 2 and len(set(results["urls"])) == 2
    assert all((run_dir / "eval" / f"apr_random.server.{i}.log").is_file() for i in (0, 1))
    assert [s["temperature"] for s in results["settings"]] == [0.0, 1.0]
    for s in results["settings"]:
        assert s["problems"] == 6 and 0 < s["mean_longest_thread"] <= 96 and s["mean_total_tokens"] > 0
        assert set(s["cumulative_accuracy"]) == {"64", "96"}
    lines = (run_dir / "eval" / "apr_random.trajectories.jsonl").read_text().splitlines()
    assert len(lines) == 12 and json.loads(lines[0])["threads"][0]["segments"]
    assert "results:" in proc.stdout


def test_eval_against_a_url_scores_the_solver_traces(run_dir, tmp_path):
    """A replay server answers with the solver's SoS+ traces for the test problems' own prompts:
    eval's accuracy must equal the solver's success on them, and best-of-n's pass@k agree."""
    from apr_ds.rollout.server_proc import ServerProcess
    from apr_ds.tasks import get_task
    from apr_ds.tasks.countdown import Problem
    from apr_ds.tasks.task import problem_rng
    cfg = load_config("tiny")
    task = get_task(cfg)
    problems = [Problem.from_json(json.loads(x)) for x in (run_dir / "data" / "problems" / "test.jsonl").read_text().splitlines()]
    runs = [task.solve(p, "sosp", problem_rng(9, "sosp", i)) for i, p in enumerate(problems)]
    replay = tmp_path / "replay.jsonl"
    replay.write_text("".join(json.dumps({"text": r.main_calls[0]}) + "\n" for r in runs))
    with ServerProcess.start_ours(str(run_dir / "model"), overrides=[f"engine.replay_file={replay}"]).wait_healthy() as server:
        proc = _eval(run_dir, "--model", str(run_dir / "model"), "--method", "sosp", "--url", server.url,
                     "rollout.max_context=1024", "--tag", "_replay")
        assert proc.returncode == 0, proc.stderr[-3000:]
        bon = _eval(run_dir, "--model", str(run_dir / "model"), "--method", "bon", "--url", server.url,
                    "rollout.max_context=1024", "eval.n=2", "eval.temperatures=[1.0]", "--tag", "_replay")
        assert bon.returncode == 0, bon.stderr[-3000:]
    results = json.loads((run_dir / "eval" / "sosp_replay.json").read_text())
    solved = sum(r.solved for r in runs) / len(runs)
    assert results["settings"][0]["accuracy"] == pytest.approx(solved)
    assert 0 < solved < 1  # the check can tell right from wrong
    bon_results = json.loads((run_dir / "eval" / "bon_replay.json").read_text())["settings"][0]
    assert bon_results["pass_at"]["2"] == pytest.approx(solved) and bon_results["cons_at"]["2"] == pytest.approx(solved)


def test_eval_splits_the_problems_over_several_urls(run_dir, tmp_path):
    """Two replay servers, each knowing the solver traces of only every other test problem: every program writes
    its problem's whole trace only if problem i was asked of server i mod 2, as `evaluate` promises (a server
    that does not know a prompt answers with EOS at once)."""
    from apr_ds.rollout.server_proc import ServerProcess
    from apr_ds.tasks import get_task
    from apr_ds.tasks.countdown import Problem
    from apr_ds.tasks.task import problem_rng
    task = get_task(load_config("tiny"))
    problems = [Problem.from_json(json.loads(x)) for x in (run_dir / "data" / "problems" / "test.jsonl").read_text().splitlines()]
    runs = [task.solve(p, "sosp", problem_rng(9, "sosp", i)) for i, p in enumerate(problems)]
    servers = []
    try:
        for half in (0, 1):
            replay = tmp_path / f"replay{half}.jsonl"
            replay.write_text("".join(json.dumps({"text": r.main_calls[0]}) + "\n" for r in runs[half::2]))
            servers.append(ServerProcess.start_ours(str(run_dir / "model"), overrides=[f"engine.replay_file={replay}"]))
        urls = [arg for server in servers for arg in ("--url", server.wait_healthy().url)]
        proc = _eval(run_dir, "--model", str(run_dir / "model"), "--method", "sosp", *urls, "rollout.max_context=1024",
                     "--tag", "_split")
    finally:
        for server in servers:
            server.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "eval" / "sosp_split.json").read_text())
    assert results["settings"][0]["accuracy"] == pytest.approx(sum(r.solved for r in runs) / len(runs))
    written = [json.loads(x)["threads"][0]["text"] for x in (run_dir / "eval" / "sosp_split.trajectories.jsonl").read_text().splitlines()]
    assert [text.strip() for text in written] == [r.main_calls[0].strip() for r in runs]


@pytest.mark.parametrize("args, message", [
    (["--method", "apr", "eval.servers=0"], "eval.servers"),
    (["--method", "apr", "--url", "http://127.0.0.1:9", "eval.servers=2"], "with --url, pass --url once per server"),
    (["--method", "apr", "eval.problems_file=nosuch.jsonl"], "no problems file"),
    (["--method", "bon", "eval.n=4"], "best-of-n with eval.n > 1 needs sampling"),
    (["--method", "apr", "eval.num_problem=3"], "did you mean 'eval.num_problems'"),
    (["--method", "apr", "eval.context_windows=[512,9999]"], "eval.context_windows must lie in [1, rollout.max_context"),
    (["--method", "apr", "rollout.max_context=4096"], "exceeds the model's"),  # the server's own message comes through
])
def test_eval_bad_inputs(run_dir, args, message):
    proc = _eval(run_dir, "--model", str(run_dir / "model"), *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]

"""`apr-ds view`: the trace viewer's page, from a real `apr-ds eval` of the shipped APR model, loaded from disk in
headless Chromium (tests/browser.py). What the page shows is checked against the trajectories file itself."""

import copy
import json
import subprocess
import sys

import pytest

from browser import Browser
from servers import SHIPPED_APR

PROBLEMS = 10


def apr_ds(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "apr_ds.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    """A run folder holding an eval of the shipped APR model (our server, started and stopped by `apr-ds eval`)."""
    run = tmp_path_factory.mktemp("view_run")
    data = apr_ds("data", "--preset", "cpu", f"run_dir={run}", "task.num_train=20", "data.workers=1")
    assert data.returncode == 0, data.stderr[-2000:]
    proc = apr_ds("eval", "--preset", "cpu", f"run_dir={run}", "--model", SHIPPED_APR, "--method", "apr",
                  f"eval.num_problems={PROBLEMS}", "rollout.max_context=768", "eval.context_windows=[512]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def records(eval_run):
    return [json.loads(line) for line in (eval_run / "eval" / "apr.trajectories.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chrome = Browser(tmp_path_factory.mktemp("chromium"))
    yield chrome
    chrome.close()


def view(*paths, out):
    proc = apr_ds("view", *paths, "--out", out, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_the_page_of_a_real_eval_shows_every_program_its_tree_timeline_and_verdict(eval_run, records, browser, tmp_path):
    page = view(eval_run, out=tmp_path / "apr.html")
    browser.open(page.as_uri())
    assert browser.evaluate("document.body.dataset.ready") == "1"
    # the index: one row per program, and its solved count is the file's `correct` count (not the summary's)
    assert browser.evaluate("document.querySelectorAll('#index tbody tr').length") == len(records)
    solved = sum(r["correct"] for r in records)
    assert browser.evaluate("document.querySelectorAll('#index tbody td .ok').length") == solved
    assert f"{solved} solved" in browser.evaluate("document.getElementById('count').textContent")

    spawning = next(i for i, r in enumerate(records) if any(t["spawns"] for t in r["threads"]))
    browser.evaluate(f"document.querySelector('#index tbody tr[data-program=\"{spawning}\"]').click()")
    record = records[spawning]
    root_spawns = record["threads"][0]["spawns"]
    assert browser.evaluate("[...document.querySelectorAll('#tree > ul > li > ul > li.spawn')].map(s => +s.dataset.children)") \
        == [len(spawn) for spawn in root_spawns]
    assert browser.evaluate("document.querySelectorAll('#tree li.child').length") == len(record["threads"]) - 1
    assert browser.evaluate("document.querySelectorAll('#timeline g.lane').length") == len(record["threads"])
    assert browser.evaluate("document.querySelectorAll('#timeline g.call').length") == \
        sum(len(t["segments"]) for t in record["threads"])
    # each thread's text, line by line, as the file has it
    assert browser.evaluate("[...document.querySelectorAll('#thread-0 .line')].map(l => l.childNodes[1].textContent)") \
        == record["threads"][0]["text"].splitlines()
    shot = browser.screenshot(tmp_path / "program.png")
    print(f"screenshot: {shot}")

    failed = next((i for i, r in enumerate(records) if not r["correct"]), None)
    assert failed is not None, "every program solved: no failed program to look at"
    browser.evaluate(f"location.hash = '#p{failed}'")
    assert records[failed]["reason"] and records[failed]["reason"] in browser.evaluate(
        "document.getElementById('verdict').textContent")
    browser.evaluate("document.getElementById('back').click()")
    assert browser.evaluate("document.getElementById('index-view').hidden") is False
    assert browser.errors() == []


def test_the_index_filters_and_sorts(eval_run, records, browser, tmp_path):
    page = view(eval_run / "eval" / "apr.trajectories.jsonl", out=tmp_path / "apr.html")
    browser.open(page.as_uri())

    def choose(name, value):
        browser.evaluate(f"(() => {{ const s = document.querySelector('select[name={name}]'); s.value = '{value}';"
                         f" s.dispatchEvent(new Event('change')); }})()")
        return browser.evaluate("document.querySelectorAll('#index tbody tr').length")

    assert choose("solved", "failed") == sum(not r["correct"] for r in records)
    assert choose("solved", "solved") == sum(r["correct"] for r in records)
    choose("solved", "all")
    assert choose("spawned", "no") == sum(not any(t["spawns"] for t in r["threads"]) for r in records)
    choose("spawned", "any")
    browser.evaluate("document.querySelector('#index th[data-key=sequential]').click()")
    column = browser.evaluate("[...document.querySelectorAll('#index th')].findIndex(th => th.dataset.key === 'sequential')")
    shown = browser.evaluate(f"[...document.querySelectorAll('#index tbody tr')].map(tr => +tr.cells[{column}].textContent)")
    assert shown == sorted(shown) and len(shown) == len(records)
    assert browser.errors() == []


def test_two_runs_show_side_by_side_per_problem(eval_run, records, browser, tmp_path):
    other = tmp_path / "again.trajectories.jsonl"
    flipped = [dict(r, correct=not r["correct"]) for r in records]
    other.write_text("".join(json.dumps(r) + "\n" for r in flipped))
    page = view(eval_run / "eval" / "apr.trajectories.jsonl", other, out=tmp_path / "pair.html")
    browser.open(page.as_uri())
    assert browser.evaluate("document.querySelectorAll('#index tbody tr').length") == len(records)
    assert browser.evaluate("document.querySelectorAll('#index tbody .cell-button').length") == 2 * len(records)
    # each problem's row: one solved and one failed cell, as the two files say
    assert browser.evaluate("[...document.querySelectorAll('#index tbody tr')].every(tr => "
                            "tr.querySelectorAll('.cell-button.ok').length === 1)")
    assert browser.errors() == []


HOSTILE = "</script><script>window.pwned = 1</script><!-- \"quotes' & <b>bold</b> \x01\x02\x1b[31m \u2028 \ud7ff"


def test_model_text_renders_as_text_whatever_it_holds(records, browser, tmp_path):
    record = copy.deepcopy(records[0])
    for thread in record["threads"]:
        thread["text"] = HOSTILE + "\n" + thread["text"]
        thread["prompt"] = HOSTILE
    record.update(correct=False, reason=HOSTILE)
    record["problem"] = {**record["problem"], "note": HOSTILE}
    path = tmp_path / "hostile.trajectories.jsonl"
    path.write_text(json.dumps(record) + "\n")
    page = view(path, out=tmp_path / "hostile.html")
    browser.open(page.as_uri())
    assert browser.evaluate("typeof window.pwned") == "undefined"
    assert browser.evaluate("document.querySelectorAll('#index tbody tr').length") == 1
    browser.evaluate("location.hash = '#p0'")
    assert browser.evaluate("typeof window.pwned") == "undefined"
    first_line = browser.evaluate("document.querySelector('#thread-0 .line').childNodes[1].textContent")
    assert first_line == HOSTILE.splitlines()[0]
    assert HOSTILE.splitlines()[0] in browser.evaluate("document.getElementById('verdict').textContent")
    assert browser.errors() == []


def test_the_page_embeds_no_token_ids_or_log_probs(records, tmp_path):
    path = tmp_path / "apr.trajectories.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    html = view(path, out=tmp_path / "apr.html").read_text()
    assert "prompt_ids" not in html and "logprobs" not in html
    some_logprob = next(s["logprobs"][3] for r in records for t in r["threads"] for s in t["segments"] if len(s["logprobs"]) > 3)
    assert repr(some_logprob) not in html


@pytest.mark.parametrize("damage, message", [
    (lambda text: text[:len(text) // 2], ":{last}: not a JSON line"),
    (lambda text: text.replace("\n", "\n{\"threads\": []}\n", 1), ":2: not a program"),
    (lambda text: text + json.dumps({"problem": {}, "method": "apr"}) + "\n", ":{next}: not a program"),
])
def test_a_damaged_file_is_refused_naming_its_line(records, tmp_path, damage, message):
    text = "".join(json.dumps(r) + "\n" for r in records)
    path = tmp_path / "bad.trajectories.jsonl"
    path.write_text(damage(text))
    proc = apr_ds("view", path, "--out", tmp_path / "bad.html", timeout=120)
    last = len(path.read_text().splitlines())
    assert proc.returncode == 2
    assert f"{path}:" in proc.stderr and message.format(last=last, next=len(records) + 1) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "bad.html").exists()


def test_a_spawn_naming_a_thread_that_is_not_there_is_refused(records, tmp_path):
    record = copy.deepcopy(records[0])
    record["threads"][0]["spawns"] = [[0]]
    path = tmp_path / "loop.trajectories.jsonl"
    path.write_text(json.dumps(record) + "\n")
    proc = apr_ds("view", path, "--out", tmp_path / "loop.html", timeout=120)
    assert proc.returncode == 2 and f"{path}:1:" in proc.stderr and "not a later thread" in proc.stderr, proc.stderr


def test_a_folder_without_programs_is_refused(tmp_path):
    proc = apr_ds("view", tmp_path, "--out", tmp_path / "x.html", timeout=120)
    assert proc.returncode == 2 and "no programs in it" in proc.stderr


def test_rl_keeps_its_share_of_programs_per_version_one_per_group(records, tmp_path):
    from apr_ds.rollout.kept_programs import KeptPrograms
    from apr_ds.rollout.trajectory import Trajectory
    trajectories = [Trajectory.from_json({k: v for k, v in r.items() if k not in ("temperature", "budget")})
                    for r in records[:3]]
    ranks = [KeptPrograms(tmp_path, index, 2, keep=3) for index in range(2)]
    assert [rank.quota for rank in ranks] == [2, 1]
    for group in range(4):
        for rank in ranks:
            rank.offer(version=group // 3, group_index=group, trajectories=trajectories, rewards=[0.5, 1.0, 0.0])
    kept = [[json.loads(line) for line in rank.path.read_text().splitlines()] for rank in ranks]
    assert [(r["version"], r["group"]) for r in kept[0]] == [(0, 0), (0, 1), (1, 3)]
    assert [(r["version"], r["group"]) for r in kept[1]] == [(0, 0), (1, 3)]
    assert all(r["reward"] == 0.5 and r["problem"] == records[0]["problem"] for r in kept[0] + kept[1])
    assert KeptPrograms(tmp_path, 1, 2, keep=1).quota == 0


def test_report_writes_and_links_each_runs_viewer_page(eval_run, records, browser, tmp_path):
    proc = apr_ds("report", eval_run, "--out", tmp_path / "report", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = tmp_path / "report" / "view" / "apr.html"
    assert str(page) in proc.stdout and "- [apr](view/apr.html)" in (tmp_path / "report" / "report.md").read_text()
    browser.open(page.as_uri())
    assert browser.evaluate("document.querySelectorAll('#index tbody tr').length") == len(records)
    assert browser.errors() == []

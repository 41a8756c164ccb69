"""`apr-ds view`: spawn/join programs as one self-contained HTML page, to look at what a model did.

    apr-ds view runs/cpu/eval/apr.trajectories.jsonl --out apr.html
    apr-ds view runs/cpu                       --out cpu.html        # every eval file of a run (and kept RL programs)
    apr-ds view runs/sft/eval/apr.trajectories.jsonl runs/rl/eval/apr.trajectories.jsonl --out sft_vs_rl.html
    apr-ds view runs/cpu/rl                    --out rl.html         # the programs rl.keep_programs kept

A PATH is a trajectories file (`apr-ds eval`'s `{method}{tag}.trajectories.jsonl`, or a file of programs RL kept),
or a folder: its own trajectories files, those of its `eval/` folder, and the programs RL kept under `programs/`
or `rl/programs/`. Each file is a *source*; with two or more, the index can also show them side by side per problem.

The page has no network dependency: its script and style are inline (`page.js`, `page.css`) and every program is
embedded as JSON, one `<script type="application/json">` element each, parsed only when it is opened. What a
program's view needs is computed here, by the task that wrote the trace: each thread's lines with their kinds and
the per-line checks they fail, the spawn tree, and each generation call's timing; token ids and log-probs stay out.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from apr_ds.errors import UserError
from apr_ds.rollout.kept_programs import PROGRAMS_DIR
from apr_ds.rollout.trajectory import TRAJECTORIES_SUFFIX, Trajectory

TRAJECTORIES_GLOB = "*" + TRAJECTORIES_SUFFIX
EXTRA_KEYS = ("temperature", "budget", "reward", "version", "rollout", "group")
"""What a line may carry beside the trajectory: eval's setting, or RL's reward, weight version and group."""
PAGE_DIR = Path(__file__).parent


def add_arguments(parser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="trajectories files, or run/eval folders holding them (two or more: side by side)")
    parser.add_argument("--out", required=True, help="the HTML page to write")
    parser.add_argument("--title", default="", help="the page's title (default: the sources' names)")


def main(args) -> int:
    out = write_page(args.paths, Path(args.out), args.title)
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


@dataclass
class Source:
    label: str
    files: list[Path]
    task: object
    config_note: str
    programs: list[tuple[Trajectory, dict]] = field(default_factory=list)
    """Each program and its extra keys (EXTRA_KEYS), in file order."""


def write_page(paths: list[str], out: Path, title: str = "") -> Path:
    """Read every source (any bad line is an error naming its file and line, before anything is written), then
    write the page."""
    sources = [source for path in paths for source in find_sources(Path(path), several=len(paths) > 1)]
    for source in sources:
        for file in source.files:
            source.programs += read_programs(file)
    html = render_page(sources, title or " vs ".join(s.label for s in sources))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="ascii")
    return out


# ---------------------------------------------------------------------------- finding and reading the files

def find_sources(path: Path, several: bool) -> list[Source]:
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_file():
        return [make_source([path], several)]
    eval_files = sorted(path.glob(TRAJECTORIES_GLOB)) + sorted((path / "eval").glob(TRAJECTORIES_GLOB))
    sources = [make_source([file], several) for file in eval_files]
    for programs_dir in (path / PROGRAMS_DIR, path / "rl" / PROGRAMS_DIR):
        files = sorted(programs_dir.glob("*.jsonl"))
        if files:
            sources.append(make_source(files, several))
    if not sources:
        raise UserError(f"{path}: no programs in it (looked for {TRAJECTORIES_GLOB} in it and in its eval/ folder, "
                        f"and for RL's {PROGRAMS_DIR}/*.jsonl)")
    return sources


def make_source(files: list[Path], several: bool) -> Source:
    """A source's task comes from the config its run saved beside it: the eval's `{method}{tag}.config.yaml`, or
    an RL run's `config.yaml` above its programs folder."""
    from apr_ds.config import Config, load_config
    from apr_ds.tasks import get_task

    first = files[0]
    if first.name.endswith(TRAJECTORIES_SUFFIX):
        name = first.name[:-len(TRAJECTORIES_SUFFIX)]
        config_file = first.with_name(name + ".config.yaml")
        run = first.parent.parent if first.parent.name == "eval" else first.parent
    else:
        name, config_file = "rl programs", first.parent.parent / "config.yaml"
        run = first.parent.parent.parent if first.parent.parent.name == "rl" else first.parent.parent
    label = f"{name} ({run.name})" if several and run.name else name
    if config_file.is_file():
        cfg, note = load_config(config_file=str(config_file)), f"task from {config_file}"
    else:
        cfg, note = Config(), f"no {config_file.name} beside the file: read as the default task"
    return Source(label, files, get_task(cfg), note)


def read_programs(path: Path) -> list[tuple[Trajectory, dict]]:
    programs = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read it ({e})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            cut = " (the file looks cut short)" if number == len(lines) else ""
            raise UserError(f"{path}:{number}: not a JSON line: {e.msg} at column {e.colno}{cut}") from None
        try:
            extras = {key: obj.pop(key) for key in EXTRA_KEYS if key in obj}
            trajectory = Trajectory.from_json(obj)
            check_tree(trajectory)
        except (TypeError, KeyError, AttributeError, ValueError) as e:
            raise UserError(f"{path}:{number}: not a program from `apr-ds eval` or `rl.keep_programs`: {e}") from None
        programs.append((trajectory, extras))
    if not programs:
        raise UserError(f"{path}: holds no programs")
    return programs


def check_tree(trajectory: Trajectory) -> None:
    """Every thread is where its id says, and spawns name later threads, so walking the tree ends."""
    if not trajectory.threads:
        raise ValueError("it has no threads")
    for index, thread in enumerate(trajectory.threads):
        if thread.thread_id != index:
            raise ValueError(f"thread {index} has id {thread.thread_id}")
        for child in (c for spawn in thread.spawns for c in spawn):
            if not isinstance(child, int) or not index < child < len(trajectory.threads):
                raise ValueError(f"thread {index} spawns {child!r}, which is not a later thread")


# ---------------------------------------------------------------------------- what the page embeds

def problem_label(problem: dict) -> str:
    return " ".join(f"{key}={value}" for key, value in problem.items())


def reason_kind(reason: str) -> str:
    """A failure reason without its numbers, so failures of one kind filter together."""
    return re.sub(r"\d+", "N", re.sub(r"\[[^\]]*\]", "[…]", reason))[:80]


def index_row(source_index: int, number: int, trajectory: Trajectory, extras: dict, pair_key: str) -> dict:
    children = trajectory.children_per_spawn()
    return {"src": source_index, "n": number, "key": pair_key, "problem": problem_label(trajectory.problem),
            "method": trajectory.method, "T": extras.get("temperature"), "budget": extras.get("budget"),
            "solved": trajectory.correct, "reason": "" if trajectory.correct else trajectory.reason,
            "reason_kind": "" if trajectory.correct else reason_kind(trajectory.reason),
            "threads": len(trajectory.threads), "spawns": trajectory.num_spawns,
            "children_per_spawn": round(sum(children) / len(children), 2) if children else None,
            "total": trajectory.total_tokens(), "sequential": trajectory.sequential_tokens(),
            "longest": trajectory.longest_thread(), "latency": round(trajectory.latency_s, 3),
            "version": extras.get("version"), "reward": extras.get("reward")}


def thread_outcome(thread, task) -> str:
    """What became of a thread: for a child, what it reported to its parent."""
    if thread.status == "failed":
        what = "malformed" if thread.parent_id is not None else "failed"
        return f"{what}: {thread.error}" if thread.error else what
    if thread.status != "done":
        return thread.status
    if thread.parent_id is None:
        return "done"
    return "goal reached" if task.child_result(thread.text) is not None else "no solution"


def program_detail(trajectory: Trajectory, extras: dict, task, kind_codes: dict[str, str]) -> dict:
    t0 = trajectory.start
    threads = []
    for thread in trajectory.threads:
        lines = thread.text.splitlines()
        kinds = task.line_kinds(thread.text)
        calls = [[round(seg.start - t0, 4), round(seg.end - t0, 4), seg.finish_reason, seg.weight_version,
                  seg.cached_tokens, len(seg.prompt_ids), len(seg.output_ids), new]
                 for seg, new in zip(thread.segments, thread.new_tokens())]
        threads.append({"id": thread.thread_id, "parent": thread.parent_id, "depth": thread.depth,
                        "status": thread.status, "outcome": thread_outcome(thread, task), "prompt": thread.prompt,
                        "spawns": thread.spawns, "lines": lines, "kinds": "".join(kind_codes[k] for k in kinds),
                        "failed": {str(n): skills for n, skills in task.failed_checks(thread.text).items()},
                        "calls": calls, "sequential": trajectory.sequential_tokens(thread.thread_id)})
    return {"problem": trajectory.problem, "method": trajectory.method, "solved": trajectory.correct,
            "reason": trajectory.reason, "latency": round(trajectory.latency_s, 4), **extras, "threads": threads}


CALL_FIELDS = ("start", "end", "finish", "weights", "cached", "prompt", "output", "new")
"""The order of a generation call's fields in `program_detail`'s `calls` (the page reads them by this order)."""


def page_data(sources: list[Source]) -> tuple[dict, list[dict]]:
    """The index (sources, kinds and one row per program) and each program's detail, in the same order."""
    kind_names = list(dict.fromkeys(k for s in sources for k in (*s.task.line_kind_names, "spawn", "join")))
    kind_codes = {name: chr(ord("a") + i) for i, name in enumerate(kind_names)}
    rows, details = [], []
    for source_index, source in enumerate(sources):
        seen: Counter = Counter()
        for number, (trajectory, extras) in enumerate(source.programs):
            setting = json.dumps([trajectory.problem, extras.get("temperature"), extras.get("budget")], sort_keys=True)
            seen[setting] += 1
            rows.append(index_row(source_index, number, trajectory, extras, f"{setting}#{seen[setting]}"))
            details.append(program_detail(trajectory, extras, source.task, kind_codes))
    index = {"sources": [{"label": s.label, "files": [str(f) for f in s.files], "task": s.task.name,
                          "note": s.config_note} for s in sources],
             "kinds": kind_names, "call_fields": CALL_FIELDS, "rows": rows}
    return index, details


def script_json(value) -> str:
    """JSON that cannot end its <script> element or open a comment, whatever the model wrote: every `<`, `>` and
    `&` is a \\u escape, and the text is ASCII (so no U+2028 either)."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(sources: list[Source], title: str) -> str:
    import html

    index, details = page_data(sources)
    parts = {"STYLE": (PAGE_DIR / "page.css").read_text(), "SCRIPT": (PAGE_DIR / "page.js").read_text(),
             "TITLE": html.escape(title).encode("ascii", "xmlcharrefreplace").decode(), "INDEX": script_json(index),
             "PROGRAMS": "\n".join(f'<script type="application/json" id="p{i}">{script_json(d)}</script>'
                                   for i, d in enumerate(details))}
    # One pass, so that nothing inserted (a title, the script) is itself searched for placeholders
    return re.sub(r"/\*(STYLE|SCRIPT|INDEX)\*/|<!--(TITLE|PROGRAMS)-->", lambda m: parts[m.group(1) or m.group(2)],
                  (PAGE_DIR / "page.html").read_text())

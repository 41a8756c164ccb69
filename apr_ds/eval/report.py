"""`apr-ds report RUN_DIR...`: plots and a table from `apr-ds eval` results, in the style of the paper's
Figures 3-4: accuracy against context window, total tokens, latency and sequential tokens, one line per method.

    apr-ds report runs/tiny runs/cpu --out runs/report

Reads every `{run_dir}/eval/*.json` result (or result files given directly) and writes
`accuracy_vs_context.png`, `accuracy_vs_total_tokens.png`, `accuracy_vs_latency.png`,
`accuracy_vs_sequential_tokens.png` (the critical path: accuracy at equal token latency, as ThreadWeaver compares)
and `report.md`.
"""

from __future__ import annotations

import json
from pathlib import Path

from apr_ds.errors import UserError

FIGSIZE, DPI = (6.0, 4.0), 100  # 600 x 400 pixels


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", help="run directories (their eval/*.json) or result .json files")
    parser.add_argument("--out", default="report", help="output folder (default: ./report)")


def main(args) -> int:
    results = load_results(args.runs)
    pages = viewer_pages(results, Path(args.out))
    paths = render(results, Path(args.out)) + pages
    for path in paths:
        print(path)
    return 0


def load_results(paths: list[str]) -> list[dict]:
    results = []
    for given in paths:
        path = Path(given)
        files = sorted(p for p in (path / "eval").glob("*.json")) if path.is_dir() else [path]
        if not files:
            raise UserError(f"{given}: no eval results (expected {path / 'eval'}/*.json from `apr-ds eval`)")
        for file in files:
            data = load_result_file(file)
            data["file"] = str(file)
            where = f"{file.parent.parent.name}/{file.stem}" if len(paths) > 1 else file.stem
            data["label"] = data["method"] if where == data["method"] else f"{data['method']} ({where})"
            results.append(data)
    return results


def viewer_pages(results: list[dict], out: Path) -> list[Path]:
    """Each result's programs (its `.trajectories.jsonl`, beside it) in the trace viewer, as view/{label}.html; the
    table links them. A result whose programs file is gone is reported without a page."""
    import re

    from apr_ds.rollout.trajectory import TRAJECTORIES_SUFFIX
    from apr_ds.view.build import write_page

    pages = []
    for result in results:
        file = Path(result["file"])
        programs = file.with_name(file.stem + TRAJECTORIES_SUFFIX)
        if programs.is_file():
            name = re.sub(r"[^A-Za-z0-9._-]+", "_", result["label"]).strip("_")
            page = out / "view" / f"{name}.html"
            if page in pages:  # two labels that clean to one name
                page = out / "view" / f"{name}_{len(pages)}.html"
            pages.append(write_page([str(programs)], page, result["label"]))
            result["viewer"] = str(page.relative_to(out))
    return pages


def load_result_file(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{file}: not a readable results file ({e})") from None
    if not isinstance(data, dict) or "settings" not in data or "method" not in data:
        raise UserError(f"{file}: not an `apr-ds eval` results file (no method/settings)")
    return data


def _points(result: dict, x_key: str) -> tuple[list[float], list[float]]:
    if result["method"] == "bon" and x_key == "mean_total_tokens":
        s = result["settings"][0]
        ks = sorted(s.get("cons_at", {}), key=int)
        return [s["mean_total_tokens_at"][k] for k in ks], [s["cons_at"][k] for k in ks]
    pts = sorted((s[x_key], s["accuracy"]) for s in result["settings"])
    return [p[0] for p in pts], [p[1] for p in pts]


def render(results: list[dict], out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, x_key, xlabel in (("accuracy_vs_context", None, "context window per thread (tokens)"),
                                ("accuracy_vs_total_tokens", "mean_total_tokens", "total tokens per problem"),
                                ("accuracy_vs_latency", "mean_latency_s", "latency per problem (s)"),
                                ("accuracy_vs_sequential_tokens", "mean_sequential_tokens",
                                 "sequential tokens per problem (critical path)")):
        fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
        for result in results:
            if x_key is None:
                curve = result["settings"][0]["cumulative_accuracy"]
                xs = sorted(int(w) for w in curve)
                ax.plot(xs, [100 * curve[str(w)] for w in xs], marker="o", label=result["label"])
            else:
                xs, ys = _points(result, x_key)
                ax.plot(xs, [100 * y for y in ys], marker="o", label=result["label"] + (" cons@n" if result["method"] == "bon" and x_key == "mean_total_tokens" else ""))
        if x_key is None:
            label_windows(ax, [int(w) for result in results for w in result["settings"][0]["cumulative_accuracy"]])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    path = out / "report.md"
    path.write_text(markdown_table(results))
    written.append(path)
    return written


def label_windows(ax, windows: list[int]) -> None:
    """A log2 axis ticked at the windows measured, so a window that is not a power of two (768) is labelled too."""
    ticks = sorted(set(windows))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, labels=[str(w) for w in ticks])
    ax.minorticks_off()


def markdown_table(results: list[dict]) -> str:
    lines = ["| method | split | T | budget | n | accuracy | total tokens | sequential tokens | acceleration | longest thread | "
             "latency s | spawns | spawn rate | children/spawn |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for s in r["settings"]:
            # results written before acceleration and spawn rate were measured show '-'
            acceleration = f"{s['mean_acceleration']:.2f}" if "mean_acceleration" in s else "-"
            spawn_rate = f"{100 * s['spawn_rate']:.1f}%" if "spawn_rate" in s else "-"
            lines.append(f"| {r['label']} | {r['split']} | {s['temperature']} | {s['budget'] if s['budget'] is not None else '-'} | {s['n']} | "
                         f"{100 * s['accuracy']:.1f}% | {s['mean_total_tokens']:.0f} | {s['mean_sequential_tokens']:.0f} | {acceleration} | "
                         f"{s['mean_longest_thread']:.0f} | {s['mean_latency_s']:.2f} | {s['spawns_per_program']:.2f} | {spawn_rate} | "
                         f"{s['children_per_spawn']:.2f} |")
    lines += ["", "Cumulative accuracy by context window (first setting of each result):", ""]
    windows = sorted({int(w) for r in results for w in r["settings"][0]["cumulative_accuracy"]})
    lines.append("| method | " + " | ".join(str(w) for w in windows) + " |")
    lines.append("|---|" + "---|" * len(windows))
    for r in results:
        curve = r["settings"][0]["cumulative_accuracy"]
        lines.append(f"| {r['label']} | " + " | ".join(f"{100 * curve[str(w)]:.1f}%" if str(w) in curve else "-" for w in windows) + " |")
    bon = [r for r in results if r["method"] == "bon"]
    if bon:
        lines += ["", "Best-of-n (first setting):", "", "| method | k | pass@k | cons@k | total tokens |", "|---|---|---|---|---|"]
        for r in bon:
            s = r["settings"][0]
            for k in sorted(s["pass_at"], key=int):
                lines.append(f"| {r['label']} | {k} | {100 * s['pass_at'][k]:.1f}% | {100 * s['cons_at'][k]:.1f}% | {s['mean_total_tokens_at'][k]:.0f} |")
    viewed = [r for r in results if r.get("viewer")]
    if viewed:
        lines += ["", "Every program, in the trace viewer (`apr-ds view`; the pages open from disk):", ""]
        lines += [f"- [{r['label']}]({r['viewer']})" for r in viewed]
    return "\n".join(lines) + "\n"

"""`apr-ds report` renders real PNGs and a table from small results files."""

import json
import subprocess
import sys

from PIL import Image


def _setting(acc, tokens, latency, **extra):
    return {"temperature": 0.0, "budget": None, "n": 1, "accuracy": acc, "mean_total_tokens": tokens,
            "mean_sequential_tokens": tokens / 2, "mean_longest_thread": 300, "mean_latency_s": latency,
            "spawns_per_program": 1.0, "children_per_spawn": 3.0,
            "cumulative_accuracy": {"128": acc / 4, "256": acc / 2, "512": acc}, **extra}


def test_report_renders_plots_and_table(tmp_path):
    run = tmp_path / "run" / "eval"
    run.mkdir(parents=True)
    (run / "apr.json").write_text(json.dumps({"method": "apr", "split": "test", "model": "m", "settings":
                                              [_setting(0.4, 900, 1.5, mean_acceleration=1.8, spawn_rate=0.75),
                                               {**_setting(0.5, 1300, 2.0), "budget": 6}]}))
    (run / "sosp.json").write_text(json.dumps({"method": "sosp", "split": "test", "model": "m", "settings": [_setting(0.25, 700, 2.5)]}))
    (run / "bon.json").write_text(json.dumps({"method": "bon", "split": "test", "model": "m", "settings": [
        {**_setting(0.2, 700, 2.5, n=4), "pass_at": {"1": 0.2, "2": 0.3, "4": 0.45}, "cons_at": {"1": 0.2, "2": 0.22, "4": 0.3},
         "mean_total_tokens_at": {"1": 700, "2": 1400, "4": 2800}}]}))
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "apr_ds.cli", "report", str(tmp_path / "run"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in ("accuracy_vs_context", "accuracy_vs_total_tokens", "accuracy_vs_latency", "accuracy_vs_sequential_tokens"):
        image = Image.open(out / f"{name}.png")
        assert image.size == (600, 400)
        colors = image.convert("RGB").getcolors(maxcolors=100_000)
        assert colors is not None and len(colors) > 20  # lines, labels and legend, not a blank canvas
    table = (out / "report.md").read_text()
    assert "| apr | test | 0.0 | 6 | 1 | 50.0% | 1300 |" in table
    assert "| 40.0% | 900 | 450 | 1.80 | 300 | 1.50 | 1.00 | 75.0% | 3.00 |" in table
    assert "| 25.0% | 700 | 350 | - | 300 | 2.50 | 1.00 | - | 3.00 |" in table  # a result from before these metrics
    assert "| bon | 4 | 45.0% | 30.0% | 2800 |" in table
    assert "256" in table and "12.5%" in table


def test_report_rejects_a_folder_without_results(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "apr_ds.cli", "report", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no eval results" in proc.stderr and "Traceback" not in proc.stderr


def test_the_context_axis_labels_every_window_measured_powers_of_two_or_not():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from apr_ds.eval.report import label_windows

    fig, ax = plt.subplots()
    ax.plot([512, 768], [1, 2])
    label_windows(ax, [768, 512, 768])
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["512", "768"]
    plt.close(fig)

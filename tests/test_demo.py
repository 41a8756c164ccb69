"""`apr-ds demo` refuses a missing shipped-checkpoint folder at once, before its ten-minute first part."""

import subprocess
import sys


def test_a_missing_shipped_folder_stops_the_demo_before_anything_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "apr_ds.cli", "demo", f"run_dir={tmp_path / 'demo'}",
                           "--shipped", str(tmp_path / "nothing")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no shipped checkpoints at" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "demo").exists()

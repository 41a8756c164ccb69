"""Write more held-out problems than the test and val splits hold: the next problems after the train split.

    python tools/heldout_problems.py --preset cpu --count 1000 --out /root/apr-runs/cpu_task/heldout_1000.jsonl
    apr-ds eval --preset cpu ... eval.problems_file=/root/apr-runs/cpu_task/heldout_1000.jsonl

500 test problems tell a 1-point change from noise only by luck, and growing `task.num_test` would move val and
train (they are filled after test). These problems come from the same distribution as the splits and are
disjoint from all of them, so a model trained on the preset's `task.num_train` problems has never seen one.
key=value overrides are the preset's, as for `apr-ds data`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from apr_ds.config import add_config_arguments, config_from_args  # noqa: E402
from apr_ds.data.build import write_problems  # noqa: E402
from apr_ds.errors import UserError  # noqa: E402
from apr_ds.tasks.countdown import problems_beyond_train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--count", type=int, required=True, help="how many problems to write")
    parser.add_argument("--out", type=Path, required=True, help="the problems JSONL to write (must not exist)")
    args = parser.parse_args(argv)
    try:
        if args.count <= 0:
            raise UserError(f"--count must be positive, got {args.count}")
        if args.out.exists():
            raise UserError(f"{args.out} exists; choose another --out (nothing was overwritten)")
        cfg = config_from_args(args)
        problems = problems_beyond_train(cfg.task, args.count, workers=cfg.data.workers)
    except (UserError, ValueError) as e:
        print(f"heldout_problems: error: {e}", file=sys.stderr)
        return 2
    write_problems(args.out, problems)
    print(f"{len(problems)} problems after train problem {cfg.task.num_train} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

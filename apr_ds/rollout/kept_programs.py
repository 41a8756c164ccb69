"""`rl.keep_programs`: a few of the programs RL samples under each weight version, written where `apr-ds view`
reads them, so what the policy writes can be watched over steps.

Each rollout rank keeps its share of the N (split over the ranks), one program per group so that they span
problems, in {run_dir}/rl/programs/rollout{index}.jsonl: eval's trajectory records (`Trajectory.to_json`) with the
program's reward, the weight version it was sampled under (the learner step that made those weights) and its group.
With N = 0 nothing is kept and nothing is written. A resumed run starts counting afresh, so versions it samples
again after its checkpoint can have up to 2N programs in the file.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

PROGRAMS_DIR = "programs"


class KeptPrograms:
    def __init__(self, out_dir: Path, rollout_index: int, num_rollouts: int, keep: int):
        self.quota = keep // num_rollouts + (rollout_index < keep % num_rollouts)
        self.path = Path(out_dir) / PROGRAMS_DIR / f"rollout{rollout_index}.jsonl"
        self.rollout_index = rollout_index
        self.kept: Counter = Counter()

    def offer(self, version: int, group_index: int, trajectories: list, rewards: list[float]) -> None:
        """A finished group: its first program is kept while this version's share is not full."""
        if self.kept[version] >= self.quota or not trajectories:
            return
        record = {**trajectories[0].to_json(), "reward": rewards[0], "version": version,
                  "rollout": self.rollout_index, "group": group_index}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:  # appended, so a resumed run adds to what the first one kept
            f.write(json.dumps(record) + "\n")
        self.kept[version] += 1

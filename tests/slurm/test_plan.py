"""slurm/plan.py: where train.sbatch puts learner and rollout ranks, and which GPUs each sees (no slurm needed).

The multi-node GPU layouts cannot run here; their arithmetic is checked instead. A rank's GPUs are positions in its
node's GPU list (task.sh maps them to devices: test_task_sh.py).
"""

import importlib.util
import subprocess
import sys
from types import SimpleNamespace

import pytest
from slurm_cluster import ENV, REPO


def load_plan():
    spec = importlib.util.spec_from_file_location("apr_slurm_plan", REPO / "slurm" / "plan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plan = load_plan()


def cfg(learners, rollouts, server_args=()):
    return SimpleNamespace(rl=SimpleNamespace(learner_ranks=learners, rollout_ranks=rollouts,
                                              server_args=list(server_args)))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("APR_LEARNER_NODES", "APR_LEARNER_RANKS_PER_NODE", "APR_ROLLOUT_RANKS_PER_NODE", "APR_ROLLOUT_GPUS",
                 "APR_RANKS_PER_NODE", "SLURM_GPUS_ON_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_NODELIST"):
        monkeypatch.delenv(name, raising=False)


def test_one_cpu_node_takes_the_yaml_counts():
    ranks, learners, rollouts = plan.rl_layout(cfg(2, 1), ["vm"], gpus=0)
    assert (learners, rollouts) == (2, 1)
    assert ranks == [("vm", "learner", ""), ("vm", "learner", ""), ("vm", "rollout", "")]


def test_one_gpu_node_gives_rollout_ranks_the_gpus_after_the_learners():
    ranks, learners, rollouts = plan.rl_layout(cfg(4, 4), ["g1"], gpus=8)
    assert (learners, rollouts) == (4, 4)
    assert [r[2] for r in ranks] == ["", "", "", "", "4", "5", "6", "7"]


def test_nodes_split_by_role(monkeypatch):
    monkeypatch.setenv("APR_LEARNER_NODES", "1")
    ranks, learners, rollouts = plan.rl_layout(cfg(1, 1), ["a", "b", "c"], gpus=8)
    assert (learners, rollouts) == (8, 16)  # from the nodes, not the YAML
    assert [h for h, role, _ in ranks if role == "learner"] == ["a"] * 8
    assert [h for h, role, _ in ranks if role == "rollout"] == ["b"] * 8 + ["c"] * 8
    assert [d for _, role, d in ranks if role == "rollout"][:3] == ["0", "1", "2"]
    assert [role for _, role, _ in ranks] == ["learner"] * 8 + ["rollout"] * 16  # ranks 0..L-1 learn


def test_learner_nodes_default_from_the_yaml_and_tensor_parallel_servers(monkeypatch):
    monkeypatch.setenv("APR_ROLLOUT_GPUS", "2")
    ranks, learners, rollouts = plan.rl_layout(cfg(16, 1), ["a", "b", "c", "d"], gpus=8)
    assert (learners, rollouts) == (16, 8)  # 2 learner nodes for 16 learner ranks; 2 nodes x 4 servers of 2 GPUs
    assert [d for _, role, d in ranks if role == "rollout"][:4] == ["0,1", "2,3", "4,5", "6,7"]


def test_servers_take_as_many_gpus_as_their_tp_size():
    ranks, learners, rollouts = plan.rl_layout(cfg(16, 1, ["--tp-size", "2"]), ["a", "b", "c", "d"], gpus=8)
    assert (learners, rollouts) == (16, 8)  # APR_ROLLOUT_GPUS follows --tp-size
    assert [d for _, role, d in ranks if role == "rollout"][:4] == ["0,1", "2,3", "4,5", "6,7"]
    ranks, _, _ = plan.rl_layout(cfg(2, 2, ["--tp", "2"]), ["g1"], gpus=6)
    assert [d for _, _, d in ranks] == ["", "", "2,3", "4,5"]  # one node: after the learners' GPUs 0 and 1


def test_a_server_given_fewer_gpus_than_its_tp_size_stops(monkeypatch):
    monkeypatch.setenv("APR_ROLLOUT_GPUS", "1")
    with pytest.raises(SystemExit, match="APR_ROLLOUT_GPUS=1 gives each server fewer GPUs than --tp-size 2"):
        plan.rl_layout(cfg(1, 1, ["--tp-size", "2"]), ["g1"], gpus=8)


def test_impossible_layouts_stop_with_the_reason(monkeypatch):
    with pytest.raises(SystemExit, match="leaves no rollout node"):
        plan.rl_layout(cfg(16, 1), ["a", "b"], gpus=8)
    with pytest.raises(SystemExit, match="too few"):
        plan.rl_layout(cfg(6, 3), ["a"], gpus=8)
    with pytest.raises(SystemExit, match="rollout rank 3 needs 2 GPUs for --tp-size 2, but too few are left: node a"):
        plan.rl_layout(cfg(2, 2, ["--tp-size", "2"]), ["a"], gpus=4)
    monkeypatch.setenv("APR_LEARNER_RANKS_PER_NODE", "9")  # two learners would share a GPU
    with pytest.raises(SystemExit, match="learner rank 8 needs a GPU"):
        plan.rl_layout(cfg(9, 1), ["a", "b"], gpus=8)


def test_the_command_line_writes_the_hostfile_and_overrides(tmp_path):
    env = {**ENV, "SLURM_GPUS_ON_NODE": "8", "APR_LEARNER_NODES": "1"}
    env.pop("SLURM_JOB_NODELIST", None)
    done = subprocess.run([sys.executable, str(REPO / "slurm" / "plan.py"), "rl", str(tmp_path), "--preset", "tiny",
                           "rl.learner_ranks=3", "rl.rollout_ranks=5", "rl.prompts_per_step=10"], env=env,
                          capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    values = dict(line.split("=", 1) for line in done.stdout.splitlines())
    assert values["APR_LEARNER_RANKS"] == "3" and values["APR_ROLLOUT_RANKS"] == "5" and values["APR_NUM_RANKS"] == "8"
    assert values["APR_OVERRIDES"] == "()"  # one node: the YAML's counts stand
    assert len((tmp_path / "hostfile").read_text().splitlines()) == 8
    assert (tmp_path / "ranks.tsv").read_text().splitlines()[3].split("\t")[2:] == ["rollout", "3"]


@pytest.mark.parametrize("override, message", [
    ("sft.deepspeed.precision=fp16", "apr-ds rl: error: sft.deepspeed.precision must be fp32 or bf16, got 'fp16'"),
    ("rollout.top_p=0.9", "apr-ds rl: error: rl needs untruncated sampling"),  # RL's cross-section rule
])
def test_a_config_rl_cannot_run_stops_the_plan_with_the_commands_message(tmp_path, override, message):
    """Before any srun step: the section ranges when the config loads, RL's rules on the laid-out rank counts."""
    done = subprocess.run([sys.executable, str(REPO / "slurm" / "plan.py"), "rl", str(tmp_path), "--preset", "tiny",
                           override], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "ranks.tsv").exists()

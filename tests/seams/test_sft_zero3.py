"""`apr-ds sft` for real: 2 ranks, DeepSpeed ZeRO-3 over gloo, under each launcher.

- straight: torchrun, 8 steps -> loss goes down, TensorBoard scalars, keep-last-K, HF export logits.
- resumed:  mpirun -n 2 for 4 steps (stop), a fake half-written step-6 checkpoint, then the deepspeed
            launcher with --resume auto for the rest -> the same per-step losses and final weights.
Each launch is a process group of its own, killed by PID when the test is done with it.
Needs DeepSpeed's CPU comm op built once (`make ops`); without it the first launch builds it (~40 s).
"""

import json
import os
import sys
from pathlib import Path

import pytest
from launching import launch as _launch

from apr_ds.cluster.ports import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STEPS = 8
TRAIN = [f"sft.steps={STEPS}", "sft.optim.warmup_steps=4", "sft.log_every=1", "sft.checkpoint.save_every=2", "sft.checkpoint.keep_last=2",
         "sft.eval_every=4", "sft.eval_sequences=32", "sft.probe_problems=4"]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
       "PYTHONWARNINGS": "ignore::FutureWarning", "DS_ACCELERATOR": "cpu"}


def launch(cmd, timeout=400):
    return _launch(cmd, ENV, REPO, timeout)


def sft_args(run_dir, *extra):
    return ["-m", "apr_ds.cli", "sft", "--preset", "tiny", f"run_dir={run_dir}", *TRAIN, *extra]


def torchrun(run_dir, *extra):
    return [BIN / "torchrun", "--standalone", "--nproc_per_node", 2, *sft_args(run_dir, *extra)]


def mpirun(run_dir, *extra):
    return [BIN / "mpirun", "-n", 2, sys.executable, *sft_args(run_dir, *extra)]


def deepspeed(run_dir, *extra):
    return [BIN / "deepspeed", "--num_gpus", 2, "--master_port", free_port("0.0.0.0"), "--no_local_rank", "--module",
            *sft_args(run_dir, *extra)[1:]]


def scalars(run_dir, tag):
    rows = [json.loads(line) for line in (run_dir / "sft" / "sosp" / "scalars.jsonl").read_text().splitlines()]
    return {r["step"]: r[tag] for r in rows if tag in r}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sftdata")
    code, out = launch([sys.executable, "-m", "apr_ds.cli", "data", "--preset", "tiny", f"run_dir={root}", "data.workers=1",
                        "task.num_train=150", "task.num_val=20", "task.num_test=10", "task.num_test_unseen_targets=10"])
    assert code == 0, out[-3000:]
    return root / "data"


def new_run(tmp_path_factory, name, data_dir):
    run_dir = tmp_path_factory.mktemp(name)
    (run_dir / "data").symlink_to(data_dir)
    return run_dir


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir):
    run_dir = new_run(tmp_path_factory, "straight", data_dir)
    code, out = launch(torchrun(run_dir))
    assert code == 0, out[-4000:]
    return run_dir


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, data_dir):
    if not (BIN / "mpirun").exists() or not (BIN / "deepspeed").exists():
        pytest.skip("needs the venv's mpirun (pip install mpich mpi4py) and the deepspeed launcher")
    run_dir = new_run(tmp_path_factory, "resumed", data_dir)
    code, first = launch(mpirun(run_dir, "--stop-after", 4))
    assert code == 0, first[-4000:]
    half = run_dir / "sft" / "sosp" / "checkpoints" / "step_00000006"  # as if killed while saving step 6
    half.mkdir()
    (half / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"truncated")
    code, second = launch(deepspeed(run_dir, "--resume", "auto"))
    assert code == 0, second[-4000:]
    return run_dir, first, second


def test_two_rank_zero3_loss_goes_down(straight):
    losses = scalars(straight, "train/loss")
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < losses[1] - 0.3
    assert sum(losses[s] for s in (6, 7, 8)) < sum(losses[s] for s in (1, 2, 3))


@pytest.mark.skipif("TORCH_EXTENSIONS_DIR" in os.environ or sys.prefix == sys.base_prefix,
                    reason="ops go under the venv only when in a venv and TORCH_EXTENSIONS_DIR is unset")
def test_the_comm_op_the_ranks_load_is_built_under_the_venv(straight):
    built = list((Path(sys.prefix) / "torch_extensions").glob("**/deepspeed_shm_comm.so"))
    assert built, "DeepSpeed's CPU comm op was built outside this venv (~/.cache is shared by every checkout)"


def test_tensorboard_scalars_read_back(straight):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(straight / "sft" / "sosp" / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/padding_fraction",
                "train/step_time_s", "val/loss", "val/probe_accuracy", "export/max_abs_logit_diff"}
    assert expected <= tags
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, STEPS + 1))
    assert [e.step for e in events.Scalars("val/loss")] == [4, 8]
    tb_losses = [e.value for e in events.Scalars("train/loss")]
    assert tb_losses == pytest.approx([scalars(straight, "train/loss")[s] for s in range(1, STEPS + 1)], rel=1e-6)
    assert all(0 <= e.value < 0.5 for e in events.Scalars("train/padding_fraction"))
    assert 0 <= events.Scalars("val/probe_accuracy")[-1].value <= 1
    assert "val/probe_sample/text_summary" in events.Tags()["tensors"]


def test_keeps_the_last_k_complete_checkpoints(straight):
    checkpoints = straight / "sft" / "sosp" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_00000006", "step_00000008"]
    state = json.loads((checkpoints / "step_00000008" / "trainer_state.json").read_text())
    assert state["step"] == 8 and state["world_size"] == 2


def test_hf_export_gives_the_engines_logits(straight, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from apr_ds.cli import main

    assert scalars(straight, "export/max_abs_logit_diff")[STEPS] <= 1e-5  # auto export vs the ZeRO-3 engine, fp32
    assert main(["export", str(straight / "sft" / "sosp" / "checkpoints" / "step_00000008"), str(tmp_path / "hf")]) == 0
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46, 2]])
    with torch.no_grad():
        by_command = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")(ids).logits
        automatic = AutoModelForCausalLM.from_pretrained(straight / "sft" / "sosp" / "hf")(ids).logits
    assert torch.equal(by_command, automatic)


def test_resume_is_exact_and_skips_the_half_written_checkpoint(straight, resumed):
    run_dir, first, second = resumed
    assert "resumed from" in second and "step_00000004 at step 4" in second
    straight_losses, resumed_losses = scalars(straight, "train/loss"), scalars(run_dir, "train/loss")
    assert sorted(resumed_losses) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert resumed_losses[step] == pytest.approx(straight_losses[step], rel=1e-6, abs=1e-7), step

    from safetensors.torch import load_file
    a = load_file(straight / "sft" / "sosp" / "hf" / "model.safetensors")
    b = load_file(run_dir / "sft" / "sosp" / "hf" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert (run_dir / "sft" / "sosp" / "checkpoints" / "step_00000006" / "COMPLETE").is_file()  # rewritten cleanly


def test_world_size_not_dividing_the_batch_stops_every_rank(straight):
    code, out = launch(torchrun(straight, "sft.global_batch=12"))
    assert code != 0
    assert "apr-ds sft: error: world size 2 does not divide the batch" in out


def test_a_second_stage_starts_from_the_given_model(straight, tmp_path_factory, data_dir):
    run_dir = new_run(tmp_path_factory, "second_stage", data_dir)
    code, out = launch(torchrun(run_dir, "sft.steps=2", "sft.optim.warmup_steps=1", "sft.checkpoint.save_every=2", "sft.eval_every=2",
                                f"sft.init_model={straight}/sft/{{method}}/hf"))
    assert code == 0, out[-4000:]
    assert f"from {straight}/sft/sosp/hf" in out
    first, trained = scalars(straight, "train/loss"), scalars(run_dir, "train/loss")
    # Same data order (seed 0): step 1 scores straight's first batch with straight's final weights, not fresh ones.
    assert trained[1] < first[1] - 0.3
    assert trained[1] == pytest.approx(first[STEPS], abs=0.3)

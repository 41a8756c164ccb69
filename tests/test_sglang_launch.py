"""The GPU path's launch and weight-group defects found by reading SGLang's source (shared gpu-path-audit), each
pinned where it can fail on a CPU machine: the command a rollout rank starts SGLang with, the backend and rank
offset a server joins the weight group with, the serving dtype, a length refusal, and the health timeout. The same
contracts run against real SGLang in tests/conformance and tests/seams/test_rl_sglang.py."""

import asyncio
import json
import sys

import pytest
import torch

from apr_ds.cluster.messages import Regroup, Setup
from apr_ds.errors import UserError
from apr_ds.rollout.client import ServerError
from apr_ds.weight_sync.receiver import WeightReceiver
from apr_ds.rollout.server_proc import ServerProcess, serving_dtype, sglang_command, sglang_context_length
from servers import SHIPPED_APR


def _command(**options):
    command, env = sglang_command(str(SHIPPED_APR), 768, host="127.0.0.1", port=30000, **options)
    return command, env, dict(zip(command, command[1:]))


def test_sglang_serves_a_whole_thread_at_the_models_own_context():
    """A thread of max_context = max_position_embeddings tokens: SGLang must be allowed past the model's length
    (it refuses to start otherwise) and given room for its two-token margin."""
    command, env, flags = _command()
    assert flags["--context-length"] == str(768 + 2) == str(sglang_context_length(768))
    assert env["SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN"] == "1"


def test_sglang_runs_with_the_configured_interpreter_and_dtype():
    command, _, flags = _command(python="/opt/sglang-venv/bin/python", dtype=serving_dtype("bf16"))
    assert command[:3] == ["/opt/sglang-venv/bin/python", "-m", "sglang.launch_server"]
    assert flags["--dtype"] == "bfloat16" and serving_dtype("fp32") == "float32"
    assert _command()[0][0] == sys.executable  # empty: the interpreter running apr-ds


def test_the_export_records_the_dtype_the_learner_trained_in(tmp_path):
    """A bf16 learner's export says bfloat16, so `--dtype auto` elsewhere could not turn it into fp16 either."""
    from transformers import AutoConfig

    from apr_ds.model import load_hf, save_hf
    state = {k: v.to(torch.bfloat16) for k, v in load_hf(SHIPPED_APR).state_dict().items()}
    save_hf(state, AutoConfig.from_pretrained(SHIPPED_APR), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"


def test_cpu_engine_flags_and_devices():
    command, env, flags = _command(device="cpu", threads=2)
    assert flags["--device"] == "cpu" and flags["--attention-backend"] == "torch_native"
    assert env["SGLANG_USE_CPU_ENGINE"] == "1" and env["OMP_NUM_THREADS"] == "2"
    command, env, flags = _command(device="cuda", devices=["4", "5"], extra_args=["--tp-size", 2])
    assert "--device" not in flags and "SGLANG_USE_CPU_ENGINE" not in env
    assert env["CUDA_VISIBLE_DEVICES"] == "4,5" and flags["--tp-size"] == "2"
    command, _, _ = _command(device="cpu", extra_args=["--device", "cpu"])  # the user's own flags are not doubled
    assert command.count("--device") == 1


class _RecordingClient:
    def __init__(self):
        self.calls = []

    async def init_weights_update_group(self, *args, **kwargs):
        self.calls.append(("init", args, kwargs))

    async def destroy_weights_update_group(self, *args, **kwargs):
        self.calls.append(("destroy", args, kwargs))


def test_a_server_joins_the_weight_group_with_the_learners_backend_and_its_rank_offset():
    """Setup and Regroup carry the learner's backend (nccl on GPUs) and each server's offset (1 + i * tp_size)."""
    client = _RecordingClient()
    receiver = WeightReceiver(client, world=None, rollout_index=1, admit=asyncio.Event())  # no MPI, no server
    asyncio.run(receiver.join(Setup("10.0.0.1", 29600, 5, 0, 0, quota=4, rank_offset=3, backend="nccl")))
    asyncio.run(receiver.regroup(Regroup("10.0.0.1", 29700, 5, rank_offset=3, backend="nccl")))
    joins = [kwargs for kind, _, kwargs in client.calls if kind == "init"]
    assert [(j["backend"], j["rank_offset"], j["world_size"]) for j in joins] == [("nccl", 3, 5), ("nccl", 3, 5)]
    assert [kind for kind, *_ in client.calls] == ["init", "destroy", "init"]


def test_sglangs_length_refusal_is_a_full_context_not_a_failure():
    """SGLang refuses prompts a few tokens short of the sequence limit (400); the thread is truncated, as if the
    context had filled, and the program goes on like any truncated one."""
    from apr_ds.config import RolloutConfig
    from apr_ds.rollout.runtime import ProgramRunner
    from apr_ds.rollout.trajectory import Thread

    class Refusing:
        async def generate_tokens(self, *args, **kwargs):
            raise ServerError(400, "Input length (764 tokens) exceeds the maximum allowed length (764 tokens). "
                                   "Use a shorter input or enable --allow-auto-truncate.")

    class Tokens:
        bos_token_id, eos_token_id = 1, 2

    runner = ProgramRunner(Refusing(), Tokens(), task=None, cfg=RolloutConfig(max_context=768))
    thread = Thread(0, None, 0, "")
    assert asyncio.run(runner._generate(thread, [1] * 764, {})) is None
    assert thread.status == "truncated" and "764 tokens" in thread.error
    assert not ServerError(400, "temperature must be a non-negative finite number").is_length_refusal


def test_the_health_timeout_is_the_configured_one_and_names_its_key(tmp_path):
    server = ServerProcess([sys.executable, "-c", "import time; time.sleep(60)"], "http://127.0.0.1:9",
                           str(tmp_path / "server.log"))
    with pytest.raises(UserError, match=r"not healthy after 1s \(rl.server_start_timeout_s\)"):
        server.wait_healthy(timeout_s=1)
    assert server.proc.poll() is not None  # stopped on the way out


@pytest.mark.parametrize("overrides, message", [
    (["rl.server=sglang", "rl.sglang_python=/nonexistent/python"], "cannot import sglang (or does not exist)"),
    (["rl.server=vllm"], "rl.server must be ours or sglang or url, got 'vllm'"),
    (["rl.server=url", "rl.rollout_ranks=2", "rl.server_urls=[http://127.0.0.1:1]"], "one URL per rollout rank"),
])
def test_a_bad_server_choice_stops_before_any_rank_starts(tmp_path, overrides, message):
    import subprocess
    proc = subprocess.run([sys.executable, "-m", "apr_ds.cli", "rl", "--preset", "tiny", f"run_dir={tmp_path}",
                           *overrides], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "starting" not in proc.stdout


def test_each_sglang_server_gets_its_own_gpus_outside_slurm(monkeypatch):
    """Under mpiexec or the deepspeed launcher nothing narrows a rank's GPUs: the placement plan gives each server
    its --tp-size devices from the node's list, after the learners' (before, every server landed on GPU 0)."""
    from types import SimpleNamespace

    from apr_ds.config import load_config
    from apr_ds.rollout.rank import server_devices
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 6)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,4,5,6,7")
    monkeypatch.delenv("APR_ROLE", raising=False)
    cfg = load_config("tiny", ["rl.server=sglang", "rl.server_args=[--tp-size,2]"])
    node = [(0, "learner"), (1, "learner"), (2, "rollout"), (3, "rollout")]
    devices = {rank: server_devices(cfg, SimpleNamespace(rank=rank, node_ranks=node)) for rank in (2, 3)}
    assert devices == {2: ["4", "5"], 3: ["6", "7"]}
    monkeypatch.setenv("APR_ROLE", "rollout")  # slurm/task.sh narrowed CUDA_VISIBLE_DEVICES already
    assert server_devices(cfg, SimpleNamespace(rank=2, node_ranks=node)) is None
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("APR_ROLE")
    assert server_devices(cfg, SimpleNamespace(rank=2, node_ranks=node)) is None  # CPU

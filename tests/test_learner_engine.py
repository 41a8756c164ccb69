"""The DeepSpeed config checks against the YAML, the learning-rate schedule and the comm op's build lock (no process
group needed)."""

import json
import math
import os
import sys
import time
from pathlib import Path

import pytest

from apr_ds.config import DeepSpeedConfig, OptimConfig, load_config
from apr_ds.errors import UserError
from apr_ds.learner.engine import (DS_CONFIG_DIR, STALE_LOCK_S, load_ds_config, lr_at, param_groups, remove_stale_build_lock,
                                   use_venv_for_jit_builds)


def ds(config="zero3_cpu.json", precision="fp32", world_size=2, section="sft", **optim):
    """load_ds_config for an SFT section of global batch 16, micro-batch 4, and the given changes."""
    return load_ds_config(DeepSpeedConfig(config=config, precision=precision, micro_batch=4), OptimConfig(**optim), 16,
                          world_size, section)


def write(tmp_path, **fields):
    config = json.loads((DS_CONFIG_DIR / "zero3_cpu.json").read_text())
    config.update(fields)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_auto_values_come_from_the_yaml():
    filled = ds()
    assert (filled["train_batch_size"], filled["train_micro_batch_size_per_gpu"], filled["gradient_accumulation_steps"]) == (16, 4, 2)
    assert filled["gradient_clipping"] == 1.0 and filled["bf16"]["enabled"] is False
    assert filled["zero_optimization"]["stage"] == 3 and filled["zero_optimization"]["stage3_param_persistence_threshold"] == 0


def test_every_shipped_ds_config_loads_with_its_precision():
    assert ds("zero3.json", "bf16")["bf16"]["enabled"] is True
    assert ds("zero3_offload.json", "bf16", world_size=4)["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


def test_world_size_that_does_not_divide_the_batch():
    with pytest.raises(UserError, match="world size 3 does not divide the batch"):
        ds(world_size=3)


def test_explicit_values_must_agree_with_the_yaml(tmp_path):
    ds(write(tmp_path, train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=2))
    with pytest.raises(UserError, match=r"sets train_micro_batch_size_per_gpu=8 but the YAML gives 4 \(sft.deepspeed.micro_batch\)"):
        ds(write(tmp_path, train_micro_batch_size_per_gpu=8))
    with pytest.raises(UserError, match=r"sets train_batch_size=32 but the YAML gives 16 \(sft.global_batch\)"):
        ds(write(tmp_path, train_batch_size=32))
    with pytest.raises(UserError, match="gradient_accumulation_steps=1 but the YAML gives 2"):
        ds(write(tmp_path, gradient_accumulation_steps=1))
    with pytest.raises(UserError, match=r"gradient_clipping=0.5 but the YAML gives 1.0 \(sft.optim.grad_clip\)"):
        ds(write(tmp_path, gradient_clipping=0.5))
    with pytest.raises(UserError, match=r"the YAML gives 4 \(rl.deepspeed.micro_batch\)"):
        ds(write(tmp_path, train_micro_batch_size_per_gpu=8), section="rl")


def test_precision_must_agree(tmp_path):
    with pytest.raises(UserError, match="bf16.enabled=true but sft.deepspeed.precision=fp32"):
        ds("zero3.json")
    with pytest.raises(UserError, match="bf16.enabled=false but sft.deepspeed.precision=bf16"):
        ds(precision="bf16")
    with pytest.raises(UserError, match="bf16.enabled=false but rl.deepspeed.precision=bf16"):
        ds(precision="bf16", section="rl")
    with pytest.raises(UserError, match="enables fp16"):
        ds(write(tmp_path, fp16={"enabled": True}))


def test_optimizer_belongs_to_the_yaml_and_unknown_files_are_named(tmp_path):
    with pytest.raises(UserError, match="defines 'optimizer'"):
        ds(write(tmp_path, optimizer={"type": "AdamW"}))
    with pytest.raises(UserError, match=r"'zero9.json' \(rl.deepspeed.config\) not found .* choose one of zero3.json, "
                                        r"zero3_cpu.json, zero3_offload.json"):
        ds("zero9.json", section="rl")


def test_paper_schedule_is_warmup_then_cosine():
    paper = load_config("paper").sft
    optim, steps = paper.optim, paper.steps
    assert (paper.global_batch, optim.lr, steps, optim.weight_decay, optim.grad_clip) == (256, 5e-5, 19_000, 0.01, 1.0)
    assert lr_at(0, optim, steps) == pytest.approx(5e-6)  # optax warmup_cosine_decay_schedule: init 5e-6, 1 step
    assert lr_at(1, optim, steps) == pytest.approx(5e-5)
    assert lr_at(1 + 9_000 - 1, optim, steps) < 5e-5
    assert lr_at(19_000, optim, steps) == pytest.approx(5e-7)
    half = 1 + (19_000 - 1) // 2
    assert lr_at(half, optim, steps) == pytest.approx(5e-7 + 0.5 * (5e-5 - 5e-7) * (1 + math.cos(math.pi * (half - 1) / 18_999)))


def test_rl_schedule_is_constant():
    """RL's default: APR's TinyRL lr 1e-5 from the first optimizer step to the last (steps x PPO epochs)."""
    rl = load_config("paper").rl
    total = rl.steps * rl.ppo_epochs
    assert [lr_at(step, rl.optim, total) for step in (0, 1, total // 2, total - 1, total)] == [1e-5] * 5
    warm = OptimConfig(lr=1e-4, schedule="constant", warmup_start_lr=0.0, warmup_steps=4)
    assert [lr_at(step, warm, 100) for step in (0, 2, 4, 99)] == pytest.approx([0.0, 5e-5, 1e-4, 1e-4])


def test_every_preset_has_a_consistent_sft_section():
    for preset in ("tiny", "cpu", "paper"):
        cfg = load_config(preset)
        sft = cfg.sft
        load_ds_config(sft.deepspeed, sft.optim, sft.global_batch, 2 if preset != "paper" else 32, "sft")
        assert cfg.model.preset == preset
        assert lr_at(sft.steps, sft.optim, sft.steps) == pytest.approx(sft.optim.min_lr)


@pytest.mark.parametrize("preset", ["tiny", "cpu", "cpu_rl", "paper"])
def test_every_preset_has_a_consistent_rl_section(preset):
    """What learner/rl.py builds: a nominal batch of one micro-batch per learner rank."""
    rl = load_config(preset).rl
    learners = rl.learner_ranks
    ds_config = load_ds_config(rl.deepspeed, rl.optim, rl.deepspeed.micro_batch * learners, learners, "rl")
    assert ds_config["train_micro_batch_size_per_gpu"] == rl.deepspeed.micro_batch


def test_weight_decay_skips_norm_gains():
    from apr_ds.model import build_model, config_for_preset
    model = build_model(config_for_preset("tiny", 64, context=16), seed=0)
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_only_a_stale_lock_on_the_comm_op_is_removed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    now = time.time()
    locks = {name: tmp_path / name / "lock" for name in
             ("py311_cpu/deepspeed_shm_comm", "deepspeed_shm_comm", "py311_cpu/another_op")}
    for name, lock in locks.items():
        lock.parent.mkdir(parents=True)
        lock.touch()
        old = now - STALE_LOCK_S - 60
        os.utime(lock, (old, old) if name != "deepspeed_shm_comm" else (now - 30, now - 30))
    assert remove_stale_build_lock(now) == [locks["py311_cpu/deepspeed_shm_comm"]]
    assert not locks["py311_cpu/deepspeed_shm_comm"].exists()
    assert locks["deepspeed_shm_comm"].exists(), "a lock younger than a build may be a build in progress"
    assert locks["py311_cpu/another_op"].exists(), "other ops' locks are not ours to judge"
    assert str(locks["py311_cpu/deepspeed_shm_comm"]) in capsys.readouterr().err
    assert remove_stale_build_lock(now) == []


def test_ops_are_built_under_the_venv_by_its_ninja_unless_told_otherwise(tmp_path, monkeypatch):
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "ninja").touch()
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    use_venv_for_jit_builds()
    use_venv_for_jit_builds()  # every rank calls it; PATH gains the venv once
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path / "venv" / "torch_extensions")
    assert os.environ["PATH"] == f"{venv_bin}{os.pathsep}/usr/bin", "the venv's ninja comes first, whoever launched us"
    lock = tmp_path / "venv" / "torch_extensions" / "deepspeed_shm_comm" / "lock"  # torch adds no py311_cpu/ here
    lock.parent.mkdir(parents=True)
    lock.touch()
    assert remove_stale_build_lock(time.time() + STALE_LOCK_S + 60) == [lock], "the lock is looked for where the op is built"

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    use_venv_for_jit_builds()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path / "mine"), "the user's choice wins"

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.setattr(sys, "base_prefix", sys.prefix)  # no venv: torch's own defaults
    use_venv_for_jit_builds()
    assert "TORCH_EXTENSIONS_DIR" not in os.environ and os.environ["PATH"] == "/usr/bin"


@pytest.mark.skipif(sys.prefix == sys.base_prefix or "TORCH_EXTENSIONS_DIR" in os.environ,
                    reason="ops are built under the venv only when in a venv and TORCH_EXTENSIONS_DIR is unset")
def test_a_launch_with_or_without_the_venv_on_path_does_not_rebuild_the_comm_op():
    """Debian's ninja and the venv's hash a build differently; a rank without the venv on PATH rebuilt the op."""
    import subprocess
    build = [sys.executable, "-c", "from apr_ds.learner.engine import build_comm_op; build_comm_op()"]
    venv_bin = str(Path(sys.executable).parent)
    others = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and d != venv_bin]
    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
    log = Path(sys.prefix) / "torch_extensions" / "deepspeed_shm_comm" / ".ninja_log"
    subprocess.run(build, env={**env, "PATH": os.pathsep.join([venv_bin, *others])}, check=True, timeout=600)
    before = log.read_text()
    subprocess.run(build, env={**env, "PATH": os.pathsep.join(others)}, check=True, timeout=600)
    assert log.read_text() == before, "the comm op was rebuilt by a launch without the venv on PATH"

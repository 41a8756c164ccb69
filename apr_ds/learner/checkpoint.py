"""Sharded DeepSpeed checkpoints, exact resume, keep-last-K, and Hugging Face export.

A checkpoint is one directory `checkpoints/step_00001000/` holding
    zero_pp_rank_R_mp_rank_00_{model,optim}_states.pt   DeepSpeed's shards (engine, optimizer, LR schedule)
    rng_rank_R.pt                                       every rank's python/numpy/torch RNG states
    trainer_state.json                                  step, epoch, data position, world size, tokenizer sha
    model_config.json, tokenizer/                       so `apr-ds export` needs nothing else
    COMPLETE                                            written last, after every rank finished writing
`--resume auto` takes the newest directory with COMPLETE, so a save killed halfway is never picked.
The data position is the step itself: the batch plan is a pure function of (seed, epoch, step).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from apr_ds.errors import UserError

MARKER = "COMPLETE"
TAG_PREFIX = "step_"


def checkpoint_tag(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def tag_step(path: Path) -> int:
    return int(path.name[len(TAG_PREFIX):])


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    found = [p for p in checkpoint_dir.glob(f"{TAG_PREFIX}*") if p.is_dir() and p.name[len(TAG_PREFIX):].isdigit()]
    return sorted((p for p in found if is_complete(p)), key=tag_step)


def resolve_resume(resume: str, checkpoint_dir: Path) -> Path | None:
    """`auto`: the newest complete checkpoint of this run, or None to start fresh. `none`: start fresh.
    Anything else is a path for `resolve_checkpoint`."""
    if resume == "none":
        return None
    if resume == "auto":
        done = complete_checkpoints(checkpoint_dir)
        return done[-1] if done else None
    return resolve_checkpoint(Path(resume))


def resolve_checkpoint(path: Path) -> Path:
    """A complete checkpoint directory, or the newest complete one inside a checkpoints/ directory."""
    if path.is_dir() and not path.name.startswith(TAG_PREFIX):
        done = complete_checkpoints(path)
        if not done:
            raise UserError(f"no complete checkpoint in {path}")
        return done[-1]
    if not path.is_dir():
        raise UserError(f"no such checkpoint directory: {path}")
    if not is_complete(path):
        raise UserError(f"checkpoint {path} is incomplete (no {MARKER} marker: its save was interrupted); "
                        f"pick an older one, or resume with --resume auto")
    return path


def read_trainer_state(path: Path) -> dict:
    return json.loads((path / "trainer_state.json").read_text())


# ---------------------------------------------------------------------------- save / load (collective)


def save_checkpoint(engine, checkpoint_dir: Path, step: int, trainer_state: dict, model_config, tokenizer_dir: Path,
                    keep_last: int) -> Path:
    """Every rank calls this. Rank 0 writes the marker only after all ranks have written their shards."""
    import torch.distributed as dist

    rank = dist.get_rank()
    path = checkpoint_dir / checkpoint_tag(step)
    if rank == 0 and path.exists():  # left over from a run that died after this step: rewrite it cleanly
        shutil.rmtree(path)
    dist.barrier()
    engine.save_checkpoint(str(checkpoint_dir), tag=path.name, save_latest=False)  # ends with a barrier
    _save_rng(path / f"rng_rank_{rank}.pt")
    if rank == 0:
        (path / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2) + "\n")
        model_config.to_json_file(str(path / "model_config.json"))
        shutil.copytree(tokenizer_dir, path / "tokenizer", dirs_exist_ok=True)
    dist.barrier()
    if rank == 0:
        (path / MARKER).write_text(f"step {step}\n")
        prune_checkpoints(checkpoint_dir, keep_last)
    dist.barrier()
    return path


def load_checkpoint(engine, path: Path, world_size: int, tokenizer_sha256: str) -> dict:
    """Every rank calls this. Restores engine, optimizer, LR schedule and this rank's RNG states."""
    import torch.distributed as dist

    state = read_trainer_state(path)
    if state["world_size"] != world_size:
        raise UserError(f"checkpoint {path} was written by {state['world_size']} ranks but this run has {world_size}; "
                        f"exact resume needs the same world size (ZeRO-3 shards the optimizer per rank)")
    if state["tokenizer_sha256"] != tokenizer_sha256:
        raise UserError(f"checkpoint {path} was trained with a different tokenizer than the data's; "
                        f"use --resume none to start fresh, or point run_dir at the original data")
    load_path, _ = engine.load_checkpoint(str(path.parent), tag=path.name, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if load_path is None:
        raise UserError(f"DeepSpeed could not load checkpoint {path}")
    _load_rng(path / f"rng_rank_{dist.get_rank()}.pt")
    return state


def prune_checkpoints(checkpoint_dir: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` complete checkpoints; drop older ones and incomplete leftovers older than them."""
    done = complete_checkpoints(checkpoint_dir)
    if keep_last <= 0 or not done:
        return
    keep = done[-keep_last:]
    oldest_kept = tag_step(keep[0])
    for path in checkpoint_dir.glob(f"{TAG_PREFIX}*"):
        if path.is_dir() and path not in keep and path.name[len(TAG_PREFIX):].isdigit() and tag_step(path) < tag_step(done[-1]):
            if is_complete(path) or tag_step(path) < oldest_kept:
                shutil.rmtree(path, ignore_errors=True)


def _save_rng(path: Path) -> None:
    import numpy as np
    import torch
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(state, path)


def _load_rng(path: Path) -> None:
    import numpy as np
    import torch
    state = torch.load(path, weights_only=False)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- gathering and export


def gather_state_dict(engine) -> dict:
    """Full tensors of every parameter, on CPU, on every rank. Collective; gathers one parameter at a time
    (in the same order on every rank) so peak memory is the model plus one layer's weights."""
    import deepspeed

    full = {}
    for name, param in engine.module.named_parameters():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            full[name] = param.detach().to("cpu", copy=True).float()
    return full


def export_checkpoint(path: Path, out_dir: Path) -> Path:
    """A complete checkpoint -> a Hugging Face model directory (fp32 master weights). One process, no GPU."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig

    from apr_ds.model import save_hf

    if not is_complete(path):
        raise UserError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    state_dict = get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name)
    saved = json.loads((path / "model_config.json").read_text())
    config = AutoConfig.for_model(saved.pop("model_type", "llama"), **saved)
    return save_hf(state_dict, config, out_dir, tokenizer_dir=path / "tokenizer")

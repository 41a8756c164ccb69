"""Checkpoint bookkeeping without DeepSpeed: completion markers, resume choice, keep-last-K."""

import pytest

from apr_ds.errors import UserError
from apr_ds.learner.checkpoint import MARKER, checkpoint_tag, complete_checkpoints, prune_checkpoints, resolve_resume


def fake(checkpoint_dir, step, complete=True):
    path = checkpoint_dir / checkpoint_tag(step)
    path.mkdir(parents=True)
    (path / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"x")
    if complete:
        (path / MARKER).write_text("done\n")
    return path


def test_auto_never_picks_a_half_written_checkpoint(tmp_path):
    assert resolve_resume("auto", tmp_path / "none-yet") is None
    fake(tmp_path, 100)
    fake(tmp_path, 200)
    fake(tmp_path, 300, complete=False)  # killed during save
    assert resolve_resume("auto", tmp_path).name == checkpoint_tag(200)
    assert resolve_resume("none", tmp_path) is None


def test_explicit_paths(tmp_path):
    assert resolve_resume(str(fake(tmp_path, 100)), tmp_path).name == checkpoint_tag(100)
    assert resolve_resume(str(tmp_path), tmp_path / "other").name == checkpoint_tag(100)  # a checkpoints/ dir: its newest
    with pytest.raises(UserError, match="incomplete"):
        resolve_resume(str(fake(tmp_path, 300, complete=False)), tmp_path)
    with pytest.raises(UserError, match="no such checkpoint"):
        resolve_resume(str(tmp_path / "step_00000999"), tmp_path)


def test_keep_last_k(tmp_path):
    for step in (100, 200, 300):
        fake(tmp_path, step)
    fake(tmp_path, 150, complete=False)   # debris from an old crash
    fake(tmp_path, 400, complete=False)   # newer than every complete one: maybe in progress, left alone
    prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == [checkpoint_tag(200), checkpoint_tag(300)]
    assert not (tmp_path / checkpoint_tag(150)).exists() and (tmp_path / checkpoint_tag(400)).exists()

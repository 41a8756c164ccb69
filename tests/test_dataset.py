"""The learner's token dataset: loading checks, length-bucketed deterministic batch plans, collation."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apr_ds.data.dataset import IGNORE_INDEX, BatchPlan, TokenSplit, collate, eval_batches, load_sft_data
from apr_ds.errors import UserError
from sft_fixtures import make_data_dir


def plan_for(lengths, global_batch=16, micro_batch=2, world_size=2, seed=0, bucket_steps=4):
    return BatchPlan(np.asarray(lengths), global_batch, micro_batch, world_size, seed, bucket_steps)


def test_loads_train_and_val(tmp_path):
    data_dir = make_data_dir(tmp_path, num_train=40, num_val=7)
    data = load_sft_data(data_dir, "apr")
    assert len(data.train) == 40 and len(data.val) == 7
    assert data.vocab_size == data.manifest["vocab_size"]
    first = data.train.sequence(0)
    assert first[0] == 1 and first[-1] == 2  # bos ... eos
    assert len(data.train.sequence(0, context=5)) == 5
    assert data.train.lengths(10).max() <= 10


def test_each_rank_gets_the_same_number_of_micro_batches_and_a_step_is_covered_exactly():
    lengths = np.random.default_rng(0).integers(5, 300, size=203)
    plan = plan_for(lengths, global_batch=24, micro_batch=3, world_size=2)
    assert plan.accumulation == 4 and plan.steps_per_epoch == 8
    for step in range(2 * plan.steps_per_epoch):
        per_rank = [plan.rank_micro_batches(step, r) for r in range(2)]
        assert all(len(m) == plan.accumulation and all(len(b) == 3 for b in m) for m in per_rank)
        union = np.sort(np.concatenate([b for m in per_rank for b in m]))
        assert np.array_equal(union, np.sort(plan.step_indices(step)))


def test_an_epoch_uses_each_sequence_at_most_once_and_the_order_is_a_function_of_seed_and_epoch():
    lengths = np.random.default_rng(1).integers(5, 300, size=100)
    plan = plan_for(lengths)
    epoch0 = np.concatenate([plan.step_indices(s) for s in range(plan.steps_per_epoch)])
    assert len(np.unique(epoch0)) == len(epoch0) == 96
    again = plan_for(lengths)  # a fresh plan (a resumed run) sees the same batches, in any access order
    assert np.array_equal(again.step_indices(plan.steps_per_epoch + 2), plan.step_indices(plan.steps_per_epoch + 2))
    assert np.array_equal(again.step_indices(3), plan.step_indices(3))
    assert not np.array_equal(plan.epoch_order(0), plan.epoch_order(1))
    assert not np.array_equal(plan_for(lengths, seed=1).epoch_order(0), plan.epoch_order(0))


def test_bucketing_wastes_little_on_padding():
    lengths = np.random.default_rng(2).integers(10, 500, size=4000)
    bucketed = plan_for(lengths, global_batch=32, micro_batch=8, world_size=1, bucket_steps=50)
    unbucketed = plan_for(lengths, global_batch=32, micro_batch=8, world_size=1, bucket_steps=1)
    pad = lambda p: np.mean([1 - p.step_stats(s)["tokens"] / p.step_stats(s)["padded_tokens"] for s in range(100)])  # noqa: E731
    assert pad(bucketed) < 0.02 < pad(unbucketed)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(2, 50), min_size=8, max_size=60), st.sampled_from([(8, 2, 2), (8, 4, 1), (4, 1, 4)]), st.integers(0, 5))
def test_step_stats_match_the_micro_batches(lengths, geometry, step):
    global_batch, micro_batch, world = geometry
    plan = plan_for(lengths, global_batch, micro_batch, world)
    stats = plan.step_stats(step)
    micro = [b for r in range(world) for b in plan.rank_micro_batches(step, r)]
    real = sum(int(plan.lengths[b].sum()) for b in micro)
    assert stats["tokens"] == real and stats["targets"] == real - global_batch
    assert stats["padded_tokens"] == sum(int(plan.lengths[b].max()) * micro_batch for b in micro)


def test_collate_right_pads_and_labels_next_tokens():
    split = TokenSplit(np.array([1, 5, 6, 2, 1, 7, 2], dtype=np.int32), np.array([0, 4, 7]))
    input_ids, labels = collate(split, [0, 1], context=None)
    assert input_ids.tolist() == [[1, 5, 6, 2], [1, 7, 2, 0]]
    assert labels.tolist() == [[5, 6, 2, IGNORE_INDEX], [7, 2, IGNORE_INDEX, IGNORE_INDEX]]
    input_ids, labels = collate(split, [0], context=3)
    assert input_ids.tolist() == [[1, 5, 6]] and labels.tolist() == [[5, 6, IGNORE_INDEX]]


def test_eval_batches_cover_the_requested_subset():
    split = TokenSplit(np.ones(50, dtype=np.int32), np.arange(0, 51, 5))  # 10 sequences of 5
    assert sorted(np.concatenate(eval_batches(split, 0, 3, None)).tolist()) == list(range(10))
    assert sorted(np.concatenate(eval_batches(split, 4, 3, None)).tolist()) == [0, 1, 2, 3]


# ---------------------------------------------------------------------------- bad inputs stop with a message


def test_missing_data(tmp_path):
    with pytest.raises(UserError, match="run `apr-ds data`"):
        load_sft_data(tmp_path / "data", "sosp")
    data_dir = make_data_dir(tmp_path)
    (data_dir / "tokens" / "sosp" / "val.npz").unlink()
    with pytest.raises(UserError, match="missing data file .*val.npz"):
        load_sft_data(data_dir, "sosp")


def test_corrupt_npz(tmp_path):
    data_dir = make_data_dir(tmp_path)
    (data_dir / "tokens" / "sosp" / "train.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="corrupt data file .*train.npz"):
        load_sft_data(data_dir, "sosp")


def test_inconsistent_arrays(tmp_path):
    data_dir = make_data_dir(tmp_path)
    path = data_dir / "tokens" / "apr" / "train.npz"
    np.savez(path, ids=np.array([1, 99999, 2], dtype=np.int32), offsets=np.array([0, 3]))
    with pytest.raises(UserError, match="outside the vocabulary"):
        load_sft_data(data_dir, "apr")
    np.savez(path, ids=np.array([1, 5, 2], dtype=np.int32), offsets=np.array([0, 2]))
    with pytest.raises(UserError, match="offsets do not cut ids"):
        load_sft_data(data_dir, "apr")


def test_corrupt_manifest_and_count_mismatch(tmp_path):
    data_dir = make_data_dir(tmp_path)
    manifest = (data_dir / "manifest.json").read_text()
    (data_dir / "manifest.json").write_text(manifest[:20])
    with pytest.raises(UserError, match="manifest.json is corrupt"):
        load_sft_data(data_dir, "sosp")
    (data_dir / "manifest.json").write_text(manifest.replace('"sequences": 64', '"sequences": 65', 1))
    with pytest.raises(UserError, match="holds 64 sequences but manifest.json says 65"):
        load_sft_data(data_dir, "sosp")


def test_tokenizer_that_does_not_match_the_data(tmp_path):
    data_dir = make_data_dir(tmp_path)
    tokenizer_json = data_dir / "tokenizer" / "tokenizer.json"
    tokenizer_json.write_text(tokenizer_json.read_text().replace('"<unk>"', '"<UNK>"'))
    with pytest.raises(UserError, match="tokenizer mismatch"):
        load_sft_data(data_dir, "sosp")


def test_world_size_that_does_not_divide_the_batch():
    with pytest.raises(UserError, match="world size 3 does not divide the batch"):
        plan_for(np.full(100, 10), global_batch=16, micro_batch=2, world_size=3)


def test_fewer_sequences_than_one_batch_and_unknown_method(tmp_path):
    with pytest.raises(UserError, match="fewer than one batch"):
        plan_for(np.full(10, 10), global_batch=16)
    with pytest.raises(UserError, match="sft.method must be one of"):
        load_sft_data(make_data_dir(tmp_path), "sos")

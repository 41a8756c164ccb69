"""ZeRO-3 weights -> the weight-update group, in a fixed order of buckets.

Every learner rank walks the same bucket plan and gathers each bucket with `GatheredParameters`
(collective); learner rank 0 then broadcasts the bucket's full tensors in the group that the servers
joined, while each rollout rank's server receives them through /update_weights_from_distributed.
Peak extra memory is one bucket (`rl.bucket_mb`).
"""

from __future__ import annotations


def weight_plan(engine, bucket_bytes: int) -> list[list[tuple[str, object]]]:
    """The model's parameters in named order, cut into buckets of about `bucket_bytes` (full sizes)."""
    from apr_ds.cluster.weight_group import plan_buckets
    return plan_buckets(list(engine.module.named_parameters()), bucket_bytes)


def plan_metadata(plan) -> list[dict]:
    """The (names, dtypes, shapes) lists of each bucket, as /update_weights_from_distributed takes them."""
    from apr_ds.cluster.weight_group import bucket_metadata
    return [bucket_metadata(bucket) for bucket in plan]


def probe_names(plan) -> list[str]:
    """Parameters whose first rows both sides compare after each sync: the first and the last of the plan. (A tied
    output layer is not among them: SGLang refuses `lm_head.weight` by name when it is the embedding's tensor.)"""
    return [plan[0][0][0], plan[-1][-1][0]]


def broadcast_weights(plan, group, is_sender: bool, probes: list[str] = (), rows: int = 2) -> tuple[int, dict]:
    """All learner ranks call this; the sender (learner rank 0) broadcasts. Returns the bytes sent and, on the
    sender, the first `rows` rows of each probe parameter as the servers must now report them."""
    import deepspeed

    from apr_ds.cluster.weight_group import broadcast_tensors
    sent, seen = 0, {}
    for bucket in plan:
        params = [p for _, p in bucket]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            if is_sender:
                broadcast_tensors(group, [p.data for p in params])
                sent += sum(p.numel() * p.element_size() for p in params)
                seen.update({name: p.data[:rows].float().tolist() for name, p in bucket if name in probes})
    return sent, seen

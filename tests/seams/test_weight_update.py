"""Weights from a learner-side process to a running `apr-ds serve`, over a real gloo weight group.

This process plays learner rank 0: it creates the group (PrefixStore over TCPStore) while the server
joins through /init_weights_update_group, then runs pause -> /update_weights_from_distributed per
bucket (broadcasting each bucket) -> flush -> continue. Afterwards the server's /get_weights_by_name
values and greedy outputs must match the new weights exactly, and weight_version must have changed.
"""

import asyncio
import hashlib

import pytest
import torch

from apr_ds.cluster.ports import free_port
from apr_ds.cluster.weight_group import bucket_metadata, broadcast_tensors, destroy_weight_group, plan_buckets
from apr_ds.rollout.client import RolloutClient, ServerError
import weight_push
from engine_fixtures import run, save_model, serve, wait_for_load

pytestmark = pytest.mark.slow
GREEDY = {"temperature": 0, "ignore_eos": True}
PROMPT = [1, 5, 9, 200]


def checksum(values) -> str:
    return hashlib.sha256(torch.as_tensor(values, dtype=torch.float32).numpy().tobytes()).hexdigest()


def hf_greedy(model, n):
    return model.generate(torch.tensor([PROMPT]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          pad_token_id=0)[0, len(PROMPT):].tolist()


def test_learner_broadcast_updates_the_server_weights_exactly(tmp_path):
    old = save_model(tmp_path / "old", max_position_embeddings=1024, seed=0)
    new = save_model(tmp_path / "new", max_position_embeddings=1024, seed=1)  # the "trained" weights
    new_params = list(new.named_parameters())
    buckets = plan_buckets(new_params, bucket_bytes=64 * 1024)
    assert len(buckets) > 2

    async def learner(url):
        async with RolloutClient(url) as client:
            before = await client.generate_tokens(PROMPT, {"max_new_tokens": 8, **GREEDY})
            group = await weight_push.connect(client)
            try:
                in_flight = asyncio.create_task(client.generate_tokens([1, 33], {"max_new_tokens": 600, **GREEDY}))
                await wait_for_load(client, lambda load: load["num_reqs"] == 1)
                await weight_push.push(client, group, buckets, weight_version="step-1", pause_mode="retract")
                refused = await refused_bucket(client, group)
                served = {name: await client.get_weights_by_name(name, truncate_size=10**9) for name, _ in new_params}
                after = await client.generate_tokens(PROMPT, {"max_new_tokens": 8, **GREEDY})
                info = await client.get_model_info()
                await client.destroy_weights_update_group()
            finally:
                destroy_weight_group(group)
            return before, await in_flight, refused, served, after, info

    with serve(tmp_path / "old", log_path=tmp_path / "serve.log") as url:
        before, in_flight, refused, served, after, info = run(learner(url))

    assert before.output_ids == hf_greedy(old, 8) and before.weight_version == "default"
    for name, param in new_params:  # vocabulary-sized weights come back padded to a multiple of 64, as on SGLang
        assert checksum(served[name][:len(param)]) == checksum(param.detach()), name
    assert after.output_ids == hf_greedy(new, 8) and after.output_ids != before.output_ids
    assert after.weight_version == "step-1" and info["weight_version"] == "step-1"
    # retracted during the update, resumed after it: finished under the new version, never dropped
    assert in_flight.finish_reason == "length" and in_flight.weight_version == "step-1"
    assert refused == (400, "step-1")


async def refused_bucket(client, group):
    """A bucket with a wrong shape is refused without touching the model, and the group stays in step."""
    bad = [("model.norm.weight", torch.zeros(3))]
    async with client.weight_update_session():
        post = client.update_weights_from_distributed(**bucket_metadata(bad), weight_version="bad")
        results = await asyncio.gather(asyncio.to_thread(broadcast_tensors, group, [t for _, t in bad]), post,
                                       return_exceptions=True)
        status = results[1].status if isinstance(results[1], ServerError) else 200
        version = (await client.get_model_info())["weight_version"]  # unchanged by the refused bucket
        # the group is still in step: a next bucket (the current norm weight, re-sent) goes through
        norm = torch.tensor(await client.get_weights_by_name("model.norm.weight", truncate_size=10**9))
        good = [("model.norm.weight", norm)]
        await asyncio.gather(asyncio.to_thread(broadcast_tensors, group, [norm]),
                             client.update_weights_from_distributed(**bucket_metadata(good), weight_version="step-1"))
    return status, version

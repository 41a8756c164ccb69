"""Weights as RL moves them, on both servers: this process is learner rank 0 of a gloo weight group, pushes a
bucket of changed tensors the way a rollout rank does (tests/weight_push.py) (pause -> session -> update -> flush -> continue), reads
them back, and sends the originals back so the server ends as it began. /get_weights_by_name's shapes are
checked against the checkpoint itself."""

import asyncio
import copy

import pytest
import torch

from apr_ds.cluster.ports import free_port
from apr_ds.cluster.weight_group import destroy_weight_group
from apr_ds.rollout.client import RolloutClient, ServerError
import weight_push
from servers import SHIPPED_APR

NORM = "model.norm.weight"  # 1-D, [192]
Q = "model.layers.0.self_attn.q_proj.weight"  # 2-D, [192, 192]; SGLang keeps it inside a fused qkv_proj
PROMPT = [1, 10, 30, 1116, 4, 54]
GREEDY = {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(SHIPPED_APR).eval()


def hf_greedy(model, n=GREEDY["max_new_tokens"]):
    with torch.no_grad():
        out = model.generate(torch.tensor([PROMPT]), attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(PROMPT):].tolist()


def hf_logprobs(model, output_ids):
    with torch.no_grad():
        logits = model(torch.tensor([PROMPT + output_ids])).logits[0, len(PROMPT) - 1:-1]
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(output_ids)[:, None]).squeeze(1)


def test_a_pushed_bucket_is_served_read_back_and_versioned_then_undone(server, hf):
    """init_weights_update_group (gloo) -> pause, weight_update_session, update_weights_from_distributed of a
    bucket (weight_version v1), flush, continue -> get_weights_by_name returns what was sent, get_model_info and
    /generate report v1 and generation follows the new weights; the originals go back and the group is destroyed."""
    params = dict(hf.named_parameters())
    originals = [(NORM, params[NORM].detach().clone()), (Q, params[Q].detach().clone())]
    changed = [(NORM, originals[0][1] * 2), (Q, originals[1][1] * 0.5)]
    trained = copy.deepcopy(hf)
    with torch.no_grad():
        for name, tensor in changed:
            dict(trained.named_parameters())[name].copy_(tensor)

    async def main():
        async with RolloutClient(server.url, max_retries=0) as client:
            group = await weight_push.connect(client)
            try:
                await weight_push.push(client, group, [changed], weight_version="v1")
                norm = await client.get_weights_by_name(NORM, truncate_size=5)
                q = await client.get_weights_by_name(Q, truncate_size=3)
                info = await client.get_model_info()
                after = await client.generate_tokens(PROMPT, GREEDY)
                await weight_push.push(client, group, [originals], weight_version="default")
                restored = await client.get_weights_by_name(Q, truncate_size=10**9)
                destroyed = await client.destroy_weights_update_group()
            finally:
                destroy_weight_group(group)
            return norm, q, info, after, restored, destroyed
    norm, q, info, after, restored, destroyed = asyncio.run(main())
    assert torch.equal(torch.tensor(norm), changed[0][1][:5])
    assert torch.equal(torch.tensor(q), changed[1][1][:3])
    assert info["weight_version"] == "v1"
    assert after.weight_version == "v1" and after.meta_info["weight_versions"] == [
        {"version": "v1", "start": 0, "end": GREEDY["max_new_tokens"]}]
    assert after.output_ids == hf_greedy(trained) != hf_greedy(hf)
    assert torch.allclose(torch.tensor(after.logprobs), hf_logprobs(trained, after.output_ids), atol=1e-4, rtol=0)
    assert torch.equal(torch.tensor(restored), originals[1][1])
    assert destroyed == {"success": True, "message": "Succeeded to destroy custom process group."}


def test_an_update_outside_a_session_is_refused_before_anything_is_received(server):
    """update_weights_from_distributed without begin_weight_update: 400 with SGLang's message (nothing is
    broadcast: the server refuses before receiving)."""
    async def main():
        async with RolloutClient(server.url, max_retries=0) as client:
            with pytest.raises(ServerError) as refused:
                await client.update_weights_from_distributed([NORM], ["float32"], [[192]], weight_version="never")
            return refused.value, await client.get_model_info()
    refused, info = asyncio.run(main())
    assert refused.status == 400
    assert refused.message == ("update_weights_from_distributed must run between begin_weight_update() and "
                               "end_weight_update()")
    assert info["weight_version"] == "default"


@pytest.mark.parametrize("name", [NORM, "model.embed_tokens.weight", "lm_head.weight", Q,
                                  "model.layers.1.self_attn.k_proj.weight", "model.layers.1.self_attn.v_proj.weight",
                                  "model.layers.2.mlp.gate_proj.weight", "model.layers.2.mlp.up_proj.weight",
                                  "model.layers.3.mlp.down_proj.weight", "model.layers.3.input_layernorm.weight"])
def test_get_weights_by_name_returns_the_first_truncate_size_rows(server, hf, name):
    """A parameter by its checkpoint name, as float32 nested lists: the first truncate_size entries of a 1-D
    tensor, the first truncate_size rows (whole) of a 2-D one; all of it when truncate_size exceeds its length,
    the vocabulary-sized ones with their rows padded with zeros to a multiple of 64, as SGLang stores them."""
    param = dict(hf.named_parameters())[name].detach()
    if len(param) == hf.config.vocab_size:  # 1117 -> 1152
        param = torch.cat([param, param.new_zeros(-len(param) % 64, param.shape[1])])

    async def main():
        async with RolloutClient(server.url, max_retries=0) as client:
            return (await client.get_weights_by_name(name, truncate_size=3),
                    await client.get_weights_by_name(name, truncate_size=10**9))
    head, whole = asyncio.run(main())
    assert torch.equal(torch.tensor(head), param[:3]) and torch.equal(torch.tensor(whole), param)


def test_get_weights_by_name_of_an_unknown_parameter_is_refused(server):
    """An unknown name: 400 "Get parameter by name failed"."""
    async def main():
        async with RolloutClient(server.url, max_retries=0) as client:
            with pytest.raises(ServerError) as refused:
                await client.get_weights_by_name("model.no_such.weight")
            return refused.value
    refused = asyncio.run(main())
    assert refused.status == 400 and refused.message == "Get parameter by name failed"

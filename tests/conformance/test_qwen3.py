"""A Qwen3 checkpoint with tied embeddings (per-head q/k RMSNorm, one matrix for input and output) on both servers:
greedy tokens and log-probs are transformers', and a pushed embedding changes the output layer too, as one tensor.
The shipped Llama is the rest of the conformance suite's model.

SGLang 0.5.23's Qwen3 model has no `get_weights_by_name` (its Llama has): every name is refused there, so RL's
read-back probe cannot check a Qwen3 server (`weight_sync/receiver.py` then ships no probe), and our server, which
can read any parameter back, refuses a tied output layer's name as SGLang's Llama does."""

import asyncio

import pytest
import torch

import weight_push
from apr_ds.cluster.weight_group import destroy_weight_group
from apr_ds.rollout.client import RolloutClient, ServerError
from servers import started

MAX_CONTEXT = 256
PROMPT = [1, 5, 9, 33, 200]
GREEDY = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}
EMBEDDING = "model.embed_tokens.weight"


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    from apr_ds.engine.toy import save_random_model
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("qwen3")
    return directory, save_random_model(directory, family="qwen3", tie_word_embeddings=True,
                                        max_position_embeddings=MAX_CONTEXT, seed=5).eval()


@pytest.fixture(scope="module", params=["ours", "sglang"])
def server(request, qwen3, tmp_path_factory):
    log = tmp_path_factory.mktemp(f"qwen3_{request.param}") / "server.log"
    with started(request.param, qwen3[0], MAX_CONTEXT, log) as process:
        yield process


def greedy(model) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([PROMPT]), max_new_tokens=GREEDY["max_new_tokens"],
                             min_new_tokens=GREEDY["max_new_tokens"], do_sample=False, pad_token_id=0)
    return out[0, len(PROMPT):].tolist()


def test_greedy_tokens_and_logprobs_are_those_of_transformers(server, qwen3):
    _, hf = qwen3

    async def main():
        async with RolloutClient(server.url) as client:
            return await client.generate_tokens(PROMPT, GREEDY)
    out = asyncio.run(main())
    assert out.output_ids == greedy(hf)
    with torch.no_grad():
        logits = hf(torch.tensor([PROMPT + out.output_ids])).logits[0, len(PROMPT) - 1:-1]
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(out.output_ids)[:, None]).squeeze(1)
    assert torch.allclose(torch.tensor(out.logprobs), expected, atol=1e-4, rtol=0)


def test_a_pushed_embedding_is_the_output_layer_too(server, qwen3):
    _, hf = qwen3
    original = hf.model.embed_tokens.weight.detach().clone()
    changed = original.clone()
    changed[:, :16] *= -1  # every row, so the output layer's scores change
    trained = type(hf)(hf.config).eval()
    trained.load_state_dict(hf.state_dict())
    with torch.no_grad():
        trained.model.embed_tokens.weight.copy_(changed)
    assert trained.lm_head.weight is trained.model.embed_tokens.weight and greedy(trained) != greedy(hf)

    async def main():
        async with RolloutClient(server.url, max_retries=0) as client:
            with pytest.raises(ServerError) as refused:
                await client.get_weights_by_name("lm_head.weight", truncate_size=2)
            group = await weight_push.connect(client)
            try:
                await weight_push.push(client, group, [[(EMBEDDING, changed)]], weight_version="v1")
                after = await client.generate_tokens(PROMPT, GREEDY)
                await weight_push.push(client, group, [[(EMBEDDING, original)]], weight_version="default")
                restored = await client.generate_tokens(PROMPT, GREEDY)
                await client.destroy_weights_update_group()
            finally:
                destroy_weight_group(group)
            return refused.value, after, restored
    refused, after, restored = asyncio.run(main())
    assert refused.status == 400
    assert after.output_ids == greedy(trained)  # the output layer followed the embedding: one tensor
    assert restored.output_ids == greedy(hf)

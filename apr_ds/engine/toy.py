"""Random Llama checkpoints for tests, benchmarks and demos (no model hub needed).

    python -m apr_ds.engine.toy /tmp/tiny-llama           # then: apr-ds serve --model /tmp/tiny-llama

The checkpoint is a plain Hugging Face directory (config.json, model.safetensors, generation_config.json)
with our domain tokenizer saved next to it, so transformers, `apr-ds serve` and SGLang all load it.
"""

from __future__ import annotations

import sys
from pathlib import Path

SIZES = {
    # name: hidden, intermediate, layers, heads, kv_heads (the ~5M one is cpu-facts.md §5's)
    "tiny": (64, 128, 2, 4, 2),
    "5m": (256, 688, 6, 4, 4),
}


def save_random_llama(directory: str | Path, size: str = "tiny", max_position_embeddings: int = 512,
                      seed: int = 0, tie_word_embeddings: bool = False):
    """Write a randomly initialised LlamaForCausalLM and the domain tokenizer to `directory`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from apr_ds.data.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    hidden, intermediate, layers, heads, kv_heads = SIZES[size]
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=max_position_embeddings, tie_word_embeddings=tie_word_embeddings,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # HF's init (std 0.02) gives near-uniform logits; a wider spread makes greedy ties unlikely
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.1)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return model


if __name__ == "__main__":
    save_random_llama(sys.argv[1], *(sys.argv[2:3] or []))
    print(f"wrote a random Llama to {sys.argv[1]}")

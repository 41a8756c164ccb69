"""Random Llama, Qwen2 and Qwen3 checkpoints for tests, benchmarks and demos (no model hub needed).

    python -m apr_ds.engine.toy /tmp/tiny-llama                # then: apr-ds serve --model /tmp/tiny-llama
    python -m apr_ds.engine.toy /tmp/tiny-qwen3 qwen3 5m

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


def save_random_model(directory: str | Path, family: str = "llama", size: str = "tiny", max_position_embeddings: int = 512,
                      seed: int = 0, tie_word_embeddings: bool = False):
    """Write a randomly initialised Hugging Face causal LM of `family` (llama, qwen2 or qwen3) and the domain
    tokenizer to `directory`; returns the transformers model."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    from apr_ds.data.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    hidden, intermediate, layers, heads, kv_heads = SIZES[size]
    config = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[family](
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # HF's init (std 0.02) gives near-uniform logits; a wider spread makes greedy ties unlikely
        for name, param in model.named_parameters():
            if param.dim() == 2 or name.endswith(".bias"):  # biases too, so that a server ignoring them is caught
                param.normal_(0.0, 0.1)
            elif name.endswith(("q_norm.weight", "k_norm.weight")):  # likewise the per-head norms
                param.normal_(1.0, 0.2)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return model


if __name__ == "__main__":
    save_random_model(sys.argv[1], *(sys.argv[2:4] or []))
    print(f"wrote a random model to {sys.argv[1]}")

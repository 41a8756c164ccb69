"""The forward pass of Llama-family decoders over a packed, ragged batch with a paged KV cache (gpt-fast /
nano-vllm style): Llama, Qwen2 and Qwen3, chosen by `model_type` in the checkpoint's config.json.

The three differ only in their attention's projections (`FAMILIES`): Qwen2 adds a bias to q, k and v; Qwen3
normalises each head's q and k (RMSNorm over the head dimension) before RoPE and states its head dimension. Tied
input and output embeddings are a config flag of any of them.

Parameter names are Hugging Face's (`model.layers.0.self_attn.q_proj.weight`, ...), so an HF
checkpoint loads with a strict name check, and weight updates and `/get_weights_by_name` use the
names the learner's HF model has. Numerics follow transformers' models: RMSNorm in
float32, RoPE tables computed the same way, SDPA attention.

The tokens of all sequences in a step are packed into one [N] vector, so every linear layer runs
once per step for the whole batch. Only attention needs per-sequence structure: queries are padded
to [B, Qmax], each sequence's context KV is gathered from the pool into [B, Kmax] (prefill) or read
in place from the decode slab (decode_slab.py), and a mask hides padding and future positions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from apr_ds.errors import UserError


@dataclass
class Batch:
    """Tensors describing one forward step (built by runner.py)."""

    input_ids: torch.Tensor   # [N] new tokens of all sequences, packed
    positions: torch.Tensor   # [N]
    write_slots: torch.Tensor  # [N] KV slot of each new token
    context_slots: torch.Tensor | None  # [B, Kmax] KV slots of each context, 0-padded; None: read the decode slab
    mask: torch.Tensor        # [B, 1, Qmax, Kmax] True where a query may attend
    query_index: torch.Tensor | None  # [N] position of each packed token in the [B*Qmax] padded layout; None if Qmax == 1
    last_index: torch.Tensor  # [B] packed index of each sequence's last new token (its logits are sampled)
    slab_positions: torch.Tensor | None = None  # [B] decode only: where row b's new token goes in the slab


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


@dataclass(frozen=True)
class Family:
    qkv_bias: bool
    o_bias: bool
    qk_norm: bool


FAMILIES: dict[str, Callable[[bool], Family]] = {
    "llama": lambda bias: Family(qkv_bias=bias, o_bias=bias, qk_norm=False),
    "qwen2": lambda bias: Family(qkv_bias=True, o_bias=False, qk_norm=False),
    "qwen3": lambda bias: Family(qkv_bias=bias, o_bias=bias, qk_norm=True),
}
"""The `model_type`s apr-ds serve runs: how each one's attention differs from Llama's, given the config's
`attention_bias`, as transformers builds it."""


def family_of(cfg) -> Family:
    return FAMILIES[cfg.model_type](bool(getattr(cfg, "attention_bias", False)))


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        family = family_of(cfg)
        self.num_heads, self.num_kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=family.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=family.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=family.qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=family.o_bias)
        if family.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = nn.Identity()

    def forward(self, x, cos, sin, batch: Batch, k_cache: torch.Tensor, v_cache: torch.Tensor,
                k_slab: torch.Tensor | None, v_slab: torch.Tensor | None):
        n = x.shape[0]
        q = apply_rope(self.q_norm(self.q_proj(x).view(n, self.num_heads, self.head_dim)), cos, sin)
        k = apply_rope(self.k_norm(self.k_proj(x).view(n, self.num_kv_heads, self.head_dim)), cos, sin)
        v = self.v_proj(x).view(n, self.num_kv_heads, self.head_dim)
        # The pool as rows of one token's K (or V): index_copy_/index_select on rows are ~3x faster
        # than advanced indexing, and the gather below is the largest cost of a big decode step.
        k_rows, v_rows = k_cache.view(k_cache.shape[0], -1), v_cache.view(v_cache.shape[0], -1)
        k_rows.index_copy_(0, batch.write_slots, k.reshape(n, -1))
        v_rows.index_copy_(0, batch.write_slots, v.reshape(n, -1))
        num_seqs, _, q_max, _ = batch.mask.shape
        if batch.query_index is None:  # decode: one query per sequence, already in padded order
            q_pad = q.view(num_seqs, 1, self.num_heads, self.head_dim)
        else:
            q_pad = q.new_zeros(num_seqs * q_max, self.num_heads, self.head_dim)
            q_pad[batch.query_index] = q
            q_pad = q_pad.view(num_seqs, q_max, self.num_heads, self.head_dim)
        if k_slab is not None:  # decode: contexts are contiguous in the slab; append the new token in place
            rows = torch.arange(num_seqs)
            k_slab[rows, batch.slab_positions] = k
            v_slab[rows, batch.slab_positions] = v
            k_max = batch.mask.shape[-1]
            keys, values = k_slab[:num_seqs, :k_max].transpose(1, 2), v_slab[:num_seqs, :k_max].transpose(1, 2)
        else:  # gather each context from the pool
            context = batch.context_slots.flatten()
            keys = k_rows.index_select(0, context).view(num_seqs, -1, self.num_kv_heads, self.head_dim).transpose(1, 2)
            values = v_rows.index_select(0, context).view(num_seqs, -1, self.num_kv_heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q_pad.transpose(1, 2), keys, values, attn_mask=batch.mask,
                                             enable_gqa=self.num_kv_heads != self.num_heads)
        out = out.transpose(1, 2).reshape(num_seqs * q_max, self.num_heads * self.head_dim)
        if batch.query_index is not None:
            out = out[batch.query_index]
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        bias = bool(getattr(cfg, "mlp_bias", False))
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class CausalLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.model.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.model.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, batch: Batch, k_pool: torch.Tensor, v_pool: torch.Tensor,
                k_slab: torch.Tensor | None = None, v_slab: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, vocab] at each sequence's last new token; writes the new tokens' KV into the pool
        (and into the decode slab when one is given)."""
        x = self.model.embed_tokens(batch.input_ids)
        cos, sin = self.rope_cos[batch.positions].to(x.dtype), self.rope_sin[batch.positions].to(x.dtype)
        for i, layer in enumerate(self.model.layers):
            slab = (k_slab[i], v_slab[i]) if k_slab is not None else (None, None)
            x = x + layer.self_attn(layer.input_layernorm(x), cos, sin, batch, k_pool[i], v_pool[i], *slab)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        x = self.model.norm(x[batch.last_index])
        return self.lm_head(x)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [N, H, D]; cos, sin: [N, D]. HF's rotate-half convention."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rope_tables(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for every position up to max_position_embeddings, computed as transformers does."""
    params = getattr(cfg, "rope_parameters", None) or {"rope_type": "default", "rope_theta": getattr(cfg, "rope_theta", 10000.0)}
    rope_type = params.get("rope_type", "default")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if rope_type == "default":
        inv_freq = 1.0 / (params["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        scaling = 1.0
    elif rope_type in ("linear", "llama3", "yarn"):  # static scalings: the table does not depend on the sequence
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](cfg)
    else:
        raise UserError(f"rope type {rope_type!r} is not supported by apr-ds serve (default, linear, llama3, yarn are)")
    freqs = torch.arange(cfg.max_position_embeddings, dtype=torch.float)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * scaling, emb.sin() * scaling


# ---------------------------------------------------------------------------- checkpoints


def read_checkpoint(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF checkpoint directory (safetensors, sharded or not, or pytorch_model.bin)."""
    model_dir = Path(model_dir)
    if (model_dir / "model.safetensors.index.json").is_file():
        index = json.loads((model_dir / "model.safetensors.index.json").read_text())
        files = sorted(set(index["weight_map"].values()))
    elif (model_dir / "model.safetensors").is_file():
        files = ["model.safetensors"]
    elif (model_dir / "pytorch_model.bin").is_file():
        return torch.load(model_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise UserError(f"{model_dir} holds no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
    from safetensors.torch import load_file
    state = {}
    for name in files:
        state.update(load_file(str(model_dir / name)))
    return state


def load_state(model: CausalLM, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy a full HF state dict into `model`, refusing missing, unexpected or misshapen tensors."""
    expected = dict(model.named_parameters())
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}  # old checkpoints save it
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UserError(f"{source} does not match a {model.config.model_type} model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in state.items():  # check everything first: a refused update changes nothing
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise UserError(f"{source}: {name} has shape {tuple(tensor.shape)}, the model expects {tuple(expected[name].shape)}")
    with torch.no_grad():
        for name, tensor in state.items():
            expected[name].copy_(tensor)


def load_model(model_dir: str | Path, dtype: str = "float32"):
    """(model, hf_config) for a checkpoint directory of a supported family."""
    from transformers import AutoConfig
    try:
        cfg = AutoConfig.from_pretrained(str(model_dir))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read a Hugging Face config from {model_dir}: {e}") from None
    if cfg.model_type not in FAMILIES:
        raise UserError(f"{model_dir} is a {cfg.model_type!r} model; apr-ds serve runs {', '.join(FAMILIES)} models")
    if getattr(cfg, "use_sliding_window", False):  # every layer attends to the whole context here
        raise UserError(f"{model_dir}: sliding-window attention (use_sliding_window) is not supported by apr-ds serve")
    if dtype == "auto":
        torch_dtype = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None) or torch.float32
        torch_dtype = getattr(torch, torch_dtype) if isinstance(torch_dtype, str) else torch_dtype
    elif dtype in ("float32", "bfloat16", "float16"):
        torch_dtype = getattr(torch, dtype)
    else:
        raise UserError(f"engine.dtype={dtype!r}: use float32, bfloat16, float16 or auto")
    with torch.device("meta"):
        model = CausalLM(cfg)
    model = model.to_empty(device="cpu")
    cos, sin = rope_tables(cfg)  # buffers were on meta: recompute
    model.rope_cos, model.rope_sin = cos, sin
    if cfg.tie_word_embeddings:  # to_empty keeps ties, but be explicit: one tensor, two names
        model.lm_head.weight = model.model.embed_tokens.weight
    load_state(model, read_checkpoint(model_dir), str(model_dir))
    return model.to(torch_dtype).eval().requires_grad_(False), cfg

"""Model presets by name, model building, and Hugging Face save/load.

A model is a plain transformers causal LM of one of the families our server runs (`model.family`: Llama, Qwen2 or
Qwen3), so a saved directory (config.json, model.safetensors, tokenizer files) loads with
`AutoModelForCausalLM.from_pretrained` and can be served by SGLang as it is.

    from apr_ds.model import config_for_preset, build_model
    config = config_for_preset("tiny", vocab_size=len(tokenizer))                       # Llama
    config = config_for_preset("tiny", vocab_size=len(tokenizer), family="qwen3", tie_embeddings=True)
    model = build_model(config, seed=0)

Presets (apr-reference §3, cpu-scale-probe §5):
    tiny   hidden 128, 4 layers, 4 heads, SwiGLU 344, context 512: ~0.8M non-embedding parameters
    cpu    hidden 192, 4 layers, 4 heads, SwiGLU 512, context 768: ~1.8M non-embedding parameters
    paper  hidden 1024, 18 layers, 16 heads, SwiGLU 2752, context 4096: 227.7M non-embedding parameters
All use RMSNorm eps 1e-6, RoPE theta 1e4, untied input/output embeddings (unless `model.tie_embeddings`) and init
std 0.02. A Qwen2 preset adds Qwen2's q/k/v biases, a Qwen3 one Qwen3's per-head q/k RMSNorm, to the same shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from apr_ds.config import ModelPreset
from apr_ds.errors import UserError

if TYPE_CHECKING:  # torch and transformers load only where a model is really built
    from transformers import PretrainedConfig, PreTrainedModel

# Only the shape differs between presets; everything else is the paper's Llama-2-style recipe (SHARED).
# The names are model.preset's choices (apr_ds/config.py ModelPreset): a config can name no other.
PRESETS: dict[ModelPreset, dict] = {
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=344, max_position_embeddings=512),
    "cpu": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512, max_position_embeddings=768),
    "paper": dict(hidden_size=1024, num_hidden_layers=18, num_attention_heads=16, intermediate_size=2752, max_position_embeddings=4096),
}

SHARED = dict(
    hidden_act="silu",            # SwiGLU MLP
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
    tie_word_embeddings=False,
    initializer_range=0.02,
    attention_bias=False,
    mlp_bias=False,
    attention_dropout=0.0,
)

# The data's special tokens (apr_ds.data.tokenizer): pad 0, bos 1, eos 2.
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


def config_for_preset(preset: str, vocab_size: int, context: int | None = None, family: str = "llama",
                 tie_embeddings: bool = False) -> "PretrainedConfig":
    """The transformers config of a named preset in `family`; `context` overrides its maximum sequence length."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    if preset not in PRESETS:
        raise UserError(f"unknown model preset {preset!r} (model.preset); choose one of {', '.join(PRESETS)}")
    families = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}
    if family not in families:
        raise UserError(f"unknown model family {family!r} (model.family); choose one of {', '.join(families)}")
    shape = dict(PRESETS[preset])
    if context is not None:
        shape["max_position_embeddings"] = context
    heads = shape["num_attention_heads"]
    return families[family](
        vocab_size=vocab_size, num_key_value_heads=heads,  # multi-head attention, no GQA (paper)
        head_dim=shape["hidden_size"] // heads,  # Qwen3's default is 128 whatever the width
        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        **shape, **{**SHARED, "tie_word_embeddings": tie_embeddings},
    )


def build_model(config: "PretrainedConfig", seed: int) -> "PreTrainedModel":
    """A freshly initialised model. The seed alone fixes the weights, whatever the rank."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config)


def count_parameters(config: "PretrainedConfig", non_embedding: bool = True) -> int:
    """Parameter count from the shape alone (no weights are allocated)."""
    d, layers, ffn = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    attn = d * head_dim * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)  # q, o, k, v
    per_layer = attn + 3 * d * ffn + 2 * d           # attention, SwiGLU (gate, up, down), two RMSNorms
    if config.model_type == "qwen2":                 # q, k and v biases
        per_layer += head_dim * (config.num_attention_heads + 2 * config.num_key_value_heads)
    if config.model_type == "qwen3":                 # per-head q and k RMSNorms
        per_layer += 2 * head_dim
    body = layers * per_layer + d                    # + final RMSNorm
    if non_embedding:
        return body
    embeddings = config.vocab_size * d * (1 if config.tie_word_embeddings else 2)
    return body + embeddings


def save_hf(state_dict: dict, config: "PretrainedConfig", out_dir: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
    """Write a Hugging Face model directory: config.json, model.safetensors, generation config, tokenizer.

    `state_dict` holds full (gathered) tensors with HF names, as from the model's `state_dict()`.
    """
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):  # no second allocation: the real tensors come from state_dict
        model = AutoModelForCausalLM.from_config(config)
    load_weights(model, state_dict, assign=True)
    model.generation_config.pad_token_id = PAD_ID
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer
        AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(out)
    return out


def load_weights(model: "PreTrainedModel", state_dict: dict, assign: bool = False) -> None:
    """Every parameter of `model` from `state_dict` (HF names), refusing missing or unexpected ones. A tied output
    layer is the embedding's tensor under a second name: it is taken from the embedding, which is how the learner's
    `named_parameters()` name it once, whatever the state dict holds under `lm_head.weight`."""
    tied = model.config.tie_word_embeddings
    if tied:
        state_dict = {k: v for k, v in state_dict.items() if k != "lm_head.weight"}
    result = model.load_state_dict(state_dict, strict=False, assign=assign)
    missing = set(result.missing_keys) - ({"lm_head.weight"} if tied else set())
    if missing or result.unexpected_keys:
        raise UserError(f"the weights do not match a {model.config.model_type} model: missing {sorted(missing)[:5]}, "
                        f"unexpected {sorted(result.unexpected_keys)[:5]}")
    if tied:
        model.tie_weights()


def check_weights(path: str | Path) -> None:
    """Every safetensors file of a model directory has a whole header whose tensors cover the file: a truncated or
    overwritten file is named here, as a UserError, instead of surfacing as a traceback from safetensors' Rust core."""
    from safetensors import SafetensorError, safe_open

    for weights in sorted(Path(path).glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise UserError(f"{weights} is truncated or corrupt ({e}); copy or export the model again") from None


def load_hf(path: str | Path) -> "PreTrainedModel":
    """Load a saved model directory for evaluation (fp32, eval mode)."""
    import torch
    from transformers import AutoModelForCausalLM

    if not (Path(path) / "config.json").is_file():
        raise UserError(f"{path} is not a model directory (no config.json); export one with `apr-ds export CKPT OUT`")
    check_weights(path)
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    except OSError as e:  # no weights file at all
        raise UserError(f"{path} has no readable weights: {e}") from None

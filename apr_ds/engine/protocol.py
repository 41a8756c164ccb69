"""SGLang's request and response shapes (rl-systems.md §2): validation of what comes in, and the
JSON that goes out. Anything wrong raises `BadRequest`, which the server answers with HTTP 400 (a
`ContractError` where SGLang's JSON-contract gate would refuse it, in that gate's body shape).
Sampling parameters are judged by SGLang's rules, with its messages (`parse_sampling_params`).

Unknown fields are handled as SGLang 0.5.23 handles them: ignored in a request body, refused inside
`sampling_params`. Fields SGLang has but this server does not implement are accepted only with the value
that switches them off (e.g. `n: 1`, `regex: null`, `stream: false`), so SGLang's own clients, which send
those defaults, work, and nobody silently loses a feature they asked for.

Lengths are judged as SGLang judges them when launched for the same sequence limit (`max_model_len` here,
`--context-length max_model_len + 2` there; apr_ds.rollout.server_proc.sglang_context_length): the same
requests are refused, with SGLang's messages, and the rest are clipped to `max_model_len` tokens in all.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from apr_ds.engine.detokenizer import Detokenizer
from apr_ds.engine.sequence import SamplingParams, Sequence


class BadRequest(Exception):
    """A request the server refuses; the message says why (HTTP 400, body {"error": {"message": ...}})."""


class ContractError(BadRequest):
    """A /generate body that breaks SGLang's JSON contract (sglang/api/v1/api_types.py): SGLang's gate
    (http_server.py `generate_request` -> entrypoints/api_contract.py) answers those with {"error": <text>}."""


@dataclass
class Limits:
    vocab_size: int
    max_model_len: int
    default_max_new_tokens: int


@dataclass
class GenerateItem:
    prompt_ids: list[int]
    params: SamplingParams
    rid: str | None


@dataclass
class GenerateRequest:
    items: list[GenerateItem]
    is_batch: bool
    return_logprob: bool
    return_text_in_logprobs: bool
    n: int = 1
    """Samples per prompt (SGLang's parallel_sample_num, from sampling_params.n)."""
    stream: bool = False


GENERATE_FIELDS = {"text", "input_ids", "sampling_params", "rid", "return_logprob", "return_text_in_logprobs",
                   "stream"}
NEUTRAL_GENERATE_FIELDS = {
    "logprob_start_len": (-1, None), "top_logprobs_num": (0, None), "token_ids_logprob": (None,),
    "lora_path": (None,), "image_data": (None,), "input_embeds": (None,), "session_params": (None,),
    "return_hidden_states": (False,), "custom_logit_processor": (None,), "log_metrics": (True, False),
}
SAMPLING_FIELDS = {"max_new_tokens", "temperature", "top_p", "top_k", "stop", "stop_token_ids", "ignore_eos",
                   "skip_special_tokens", "no_stop_trim", "n"}
NEUTRAL_SAMPLING_FIELDS = {
    "min_new_tokens": (0,), "frequency_penalty": (0,), "presence_penalty": (0,),
    "repetition_penalty": (1,), "min_p": (0,), "regex": (None,), "json_schema": (None,), "ebnf": (None,),
    "stop_regex": (None, [], ""), "structural_tag": (None,), "spaces_between_special_tokens": (True,),
    "custom_params": (None,), "logit_bias": (None, {}), "sampling_seed": (None,), "stream_interval": (None,),
    "beam_width": (None,), "watermark": (None,), "choice": (None, []),
}
# SGLang's sampling_params fields in its contract's order (api_types.py `_FIELDS_SamplingParams`): the list its
# "unknown field" refusal names
SGLANG_SAMPLING_FIELDS = (
    "max_new_tokens", "stop", "stop_token_ids", "stop_regex", "temperature", "top_p", "top_k", "min_p",
    "frequency_penalty", "presence_penalty", "repetition_penalty", "min_new_tokens", "n", "json_schema", "regex",
    "ebnf", "structural_tag", "ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim",
    "stream_interval", "logit_bias", "sampling_seed", "custom_params", "beam_width", "watermark", "choice",
)
SAMPLING_EPS = 1e-6  # below this temperature SGLang samples greedily (sampling_params.py `_SAMPLING_EPS`)
MAX_STOP_COUNT = 32  # sampling_params.py `MAX_STOP_COUNT`


def check_fields(body: dict, known: set[str], neutral: dict | None = None, where: str = "request",
                 refuse_unknown: tuple[str, ...] = ()) -> None:
    """Refuse SGLang fields this server lacks unless they carry their 'off' value; unknown fields are ignored, as
    SGLang ignores them, unless `refuse_unknown` lists the fields there are (SGLang refuses unknown ones in
    sampling_params, with serde's text: api_types.py `_unknown_field`)."""
    neutral = neutral or {}
    for key, value in body.items():
        if key in known:
            continue
        if key in neutral:
            if value not in neutral[key]:
                raise BadRequest(f"{where} field {key!r}={value!r} is not supported by this server "
                                 f"(only {' or '.join(map(repr, neutral[key]))})")
            continue
        if refuse_unknown:
            expected = ", ".join(f"`{name}`" for name in refuse_unknown)
            raise ContractError(f"unknown field `{key}`, expected one of {expected}")


def check_contract(body) -> None:
    """What SGLang refuses at its contract gate, before a request waits out a pause (http_server.py
    `generate_request`): unknown sampling_params fields."""
    if isinstance(body, dict):
        sampling = body.get("sampling_params")
        for d in sampling if isinstance(sampling, list) else [sampling]:
            check_sampling_fields(d)


def parse_generate(body, limits: Limits, tokenizer) -> GenerateRequest:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    check_fields(body, GENERATE_FIELDS, NEUTRAL_GENERATE_FIELDS, "generate")
    check_contract(body)
    if ("text" in body) == ("input_ids" in body):
        raise BadRequest("give exactly one of 'text' or 'input_ids'")
    if "input_ids" in body:
        prompts, is_batch = _parse_input_ids(body["input_ids"], limits.vocab_size)
    else:
        prompts, is_batch = _tokenize(body["text"], tokenizer)
    params = _per_item(body.get("sampling_params"), len(prompts), is_batch, "sampling_params", dict)
    rids = _per_item(body.get("rid"), len(prompts), is_batch, "rid", str)
    items = [GenerateItem(prompt, parse_sampling_params(p or {}, limits), rid)
             for prompt, p, rid in zip(prompts, params, rids)]
    for item, p in zip(items, params):
        check_length(len(item.prompt_ids), (p or {}).get("max_new_tokens"), limits.max_model_len)
    ns = {item.params.n for item in items}
    if len(ns) > 1:  # SGLang's io_struct.py `_normalize_sampling_params` message
        raise BadRequest("The parallel_sample_num should be the same for all samples in sample params.")
    return GenerateRequest(items, is_batch, _bool(body, "return_logprob", False),
                           _bool(body, "return_text_in_logprobs", False), ns.pop(), _bool(body, "stream", False))


def check_length(prompt_len: int, max_new_tokens: int | None, max_model_len: int) -> None:
    """SGLang 0.5.23's refusals for a server whose sequences hold `max_model_len` tokens (its context length
    C = max_model_len + 2): tokenizer_manager.py `_validate_one_request` (a prompt of C tokens or more; prompt +
    max_new_tokens over C), then the scheduler's input limit C - 6 (managers/utils.py `validate_input_length`)."""
    context_length = max_model_len + 2
    if prompt_len >= context_length:
        raise BadRequest(f"The input ({prompt_len} tokens) is longer than the model's context length "
                         f"({context_length} tokens).")
    if max_new_tokens is not None and prompt_len + max_new_tokens > context_length:
        raise BadRequest(f"Requested token count exceeds the model's maximum context length of {context_length} "
                         f"tokens. You requested a total of {prompt_len + max_new_tokens} tokens: {prompt_len} tokens "
                         f"from the input messages and {max_new_tokens} tokens for the completion. Please reduce the "
                         f"number of tokens in the input messages or the completion to fit within the limit.")
    input_limit = context_length - 6
    if prompt_len >= input_limit:
        raise BadRequest(f"Input length ({prompt_len} tokens) exceeds the maximum allowed length ({input_limit} "
                         f"tokens). Use a shorter input or enable --allow-auto-truncate.")


def parse_sampling_params(d: dict, limits: Limits) -> SamplingParams:
    """SGLang's sampling_params: its defaults, its greedy rule and its refusals (sampling/sampling_params.py
    `SamplingParams.__post_init__`, `verify`, `normalize`), with its messages."""
    check_sampling_fields(d)
    params = SamplingParams(max_new_tokens=limits.default_max_new_tokens)
    if d.get("max_new_tokens") is not None:
        params.max_new_tokens = _integer(d["max_new_tokens"], "max_new_tokens")
    if d.get("temperature") is not None:
        params.temperature = _number(d["temperature"], "temperature")
    if d.get("top_p") is not None:
        params.top_p = _number(d["top_p"], "top_p")
    if d.get("top_k") is not None:
        params.top_k = _integer(d["top_k"], "top_k")
    if d.get("n") is not None:
        params.n = _integer(d["n"], "n")
        if params.n < 1:
            raise BadRequest(f"n must be at least 1, got {params.n}.")
    if 0 <= params.temperature < SAMPLING_EPS:  # greedy, whatever top_k says (`__post_init__`)
        params.temperature, params.top_k = 0.0, 1
    if not math.isfinite(params.temperature) or params.temperature < 0:
        raise BadRequest(f"temperature must be a non-negative finite number, got {d['temperature']}.")
    if not 0.0 < params.top_p <= 1.0:
        raise BadRequest(f"top_p must be in (0, 1], got {d['top_p']}.")
    if params.top_k < 1 and params.top_k != -1:  # -1 and anything above the vocabulary: no top-k cut
        raise BadRequest(f"top_k must be -1 (disable) or at least 1, got {params.top_k}.")
    if params.max_new_tokens < 0:  # too many for the context: check_length
        raise BadRequest(f"max_new_tokens must be at least 0, got {params.max_new_tokens}.")
    stop = d.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequest("stop must be a string or a list of strings")
        if len(stop) > MAX_STOP_COUNT:
            raise BadRequest(f"at most {MAX_STOP_COUNT} stop strings are allowed, got {len(stop)}")
        params.stop = stop
    if d.get("stop_token_ids") is not None:
        params.stop_token_ids = _token_ids(d["stop_token_ids"], limits.vocab_size, "stop_token_ids", allow_empty=True)
    for name in ("ignore_eos", "skip_special_tokens", "no_stop_trim"):
        setattr(params, name, _bool(d, name, getattr(params, name)))
    return params


def check_sampling_fields(d) -> None:
    """SGLang's contract gate refuses unknown sampling_params fields before it looks at anything else."""
    if isinstance(d, dict):
        check_fields(d, SAMPLING_FIELDS, NEUTRAL_SAMPLING_FIELDS, "sampling_params",
                     refuse_unknown=SGLANG_SAMPLING_FIELDS)


def response(seq: Sequence, detokenizer: Detokenizer, text_in_logprobs: bool) -> dict:
    """SGLang's /generate response for one finished request, meta_info with SGLang's keys in its order
    (managers/tokenizer_manager.py `_handle_batch_output`; a server without data parallelism, nor a host cache)."""
    meta = {
        "id": seq.rid,
        "finish_reason": seq.finish_reason(),
        "prompt_tokens": len(seq.prompt_ids),
        "weight_version": seq.weight_version,
        "num_retractions": seq.num_retractions,
    }
    if seq.return_logprob:
        texts = detokenizer.token_texts(seq.output_ids) if text_in_logprobs else [None] * len(seq.output_ids)
        meta["input_token_logprobs"] = []  # logprob_start_len -1 (the only one served): none of the prompt's
        meta["output_token_logprobs"] = [[lp, tok, text] for lp, tok, text in
                                         zip(seq.output_logprobs, seq.output_ids, texts)]
        meta["output_token_logprobs_length"] = len(seq.output_ids)
    meta.update({
        "reasoning_tokens": 0,
        "completion_tokens": len(seq.output_ids),
        "cached_tokens": seq.cached_tokens,
        "weight_versions": seq.weight_versions(),
        "cached_tokens_details": {"device": seq.cached_tokens, "host": 0} if seq.cached_tokens else None,
        "dp_rank": None,
        "e2e_latency": (seq.finish_time or seq.arrival_time) - seq.arrival_time,
        "response_sent_to_client_ts": time.time(),
    })
    return {"text": detokenizer.output_text(seq), "output_ids": list(seq.output_ids), "meta_info": meta}


# ---------------------------------------------------------------------------- value checks


def _parse_input_ids(value, vocab_size: int) -> tuple[list[list[int]], bool]:
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return [_token_ids(v, vocab_size, "input_ids") for v in value], True
    return [_token_ids(value, vocab_size, "input_ids")], False


def _tokenize(value, tokenizer) -> tuple[list[list[int]], bool]:
    if tokenizer is None:
        raise BadRequest("this server has no tokenizer (none in the model directory): send input_ids")
    texts, is_batch = ([value], False) if isinstance(value, str) else (value, True)
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise BadRequest("text must be a string or a non-empty list of strings")
    prompts = [encode_text(tokenizer, t) for t in texts]
    if not all(prompts):
        raise BadRequest("a text prompt tokenizes to no tokens")
    return prompts, is_batch


def encode_text(tokenizer, text: str) -> list[int]:
    """The tokenizer's ids for `text`; JSON can carry lone surrogates ("\\ud800"), which are no text to tokenize."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("text holds a lone UTF-16 surrogate, which is not valid Unicode") from None
    return tokenizer.encode(text)


def _token_ids(value, vocab_size: int, name: str, allow_empty: bool = False) -> list[int]:
    if not isinstance(value, list) or (not value and not allow_empty):
        raise BadRequest(f"{name} must be a {'' if allow_empty else 'non-empty '}list of token ids (or a list of such lists)")
    for token in value:
        if type(token) is not int:
            raise BadRequest(f"{name} holds {token!r}, which is not an integer token id")
        if not 0 <= token < vocab_size:
            raise BadRequest(f"{name} holds token id {token}, outside the vocabulary [0, {vocab_size})")
    return value


def _per_item(value, count: int, is_batch: bool, name: str, kind: type) -> list:
    """One value per prompt: a single value, or for a batch a list with one entry per prompt
    (a single sampling_params dict also applies to a whole batch, as in SGLang)."""
    if value is None:
        return [None] * count
    if not is_batch:
        if not isinstance(value, kind):
            raise BadRequest(f"{name} must be a {kind.__name__}, got {value!r}")
        return [value]
    if kind is dict and isinstance(value, dict):
        return [value] * count
    if isinstance(value, list) and len(value) == count and all(isinstance(v, kind) for v in value):
        return value
    raise BadRequest(f"for a batch of {count} prompts, {name} must be a list of {count} {kind.__name__} values")


def _integer(value, name: str) -> int:
    if type(value) is not int:
        raise BadRequest(f"{name} must be an integer, got {value!r}")
    return value


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{name} must be a number, got {value!r}")
    return float(value)


def _bool(d: dict, name: str, default: bool) -> bool:
    value = d.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false, got {value!r}")
    return value

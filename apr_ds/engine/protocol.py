"""SGLang's request and response shapes (rl-systems.md §2): validation of what comes in, and the
JSON that goes out. Anything wrong raises `BadRequest`, which the server answers with HTTP 400.

Unknown fields are refused. Fields SGLang has but this server does not implement are accepted only
with the value that switches them off (e.g. `n: 1`, `regex: null`, `stream: false`), so SGLang's
own clients, which send those defaults, work, and nobody silently loses a feature they asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from apr_ds.engine.detokenizer import Detokenizer
from apr_ds.engine.sequence import SamplingParams, Sequence


class BadRequest(Exception):
    """A request the server refuses; the message says why (HTTP 400)."""


@dataclass
class Limits:
    vocab_size: int
    max_model_len: int
    default_max_new_tokens: int
    max_new_tokens_limit: int


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


GENERATE_FIELDS = {"text", "input_ids", "sampling_params", "rid", "return_logprob", "return_text_in_logprobs"}
NEUTRAL_GENERATE_FIELDS = {
    "stream": (False,), "logprob_start_len": (-1, None), "top_logprobs_num": (0, None), "token_ids_logprob": (None,),
    "lora_path": (None,), "image_data": (None,), "input_embeds": (None,), "session_params": (None,),
    "return_hidden_states": (False,), "custom_logit_processor": (None,), "log_metrics": (True, False),
}
SAMPLING_FIELDS = {"max_new_tokens", "temperature", "top_p", "top_k", "stop", "stop_token_ids", "ignore_eos",
                   "skip_special_tokens", "no_stop_trim"}
NEUTRAL_SAMPLING_FIELDS = {
    "min_new_tokens": (0,), "n": (1,), "frequency_penalty": (0,), "presence_penalty": (0,),
    "repetition_penalty": (1,), "min_p": (0,), "regex": (None,), "json_schema": (None,), "ebnf": (None,),
    "stop_regex": (None, [], ""), "structural_tag": (None,), "spaces_between_special_tokens": (True,),
    "custom_params": (None,), "logit_bias": (None,), "sampling_seed": (None,),
}


def check_fields(body: dict, known: set[str], neutral: dict | None = None, where: str = "request") -> None:
    """Refuse unknown fields, and SGLang fields this server lacks unless they carry their 'off' value."""
    neutral = neutral or {}
    for key, value in body.items():
        if key in known:
            continue
        if key in neutral:
            if value not in neutral[key]:
                raise BadRequest(f"{where} field {key!r}={value!r} is not supported by this server "
                                 f"(only {' or '.join(map(repr, neutral[key]))})")
            continue
        raise BadRequest(f"unknown {where} field {key!r}; known fields: {', '.join(sorted(known))}")


def parse_generate(body, limits: Limits, tokenizer) -> GenerateRequest:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    check_fields(body, GENERATE_FIELDS, NEUTRAL_GENERATE_FIELDS, "generate")
    if ("text" in body) == ("input_ids" in body):
        raise BadRequest("give exactly one of 'text' or 'input_ids'")
    if "input_ids" in body:
        prompts, is_batch = _parse_input_ids(body["input_ids"], limits.vocab_size)
    else:
        prompts, is_batch = _tokenize(body["text"], tokenizer)
    for prompt in prompts:
        if len(prompt) > limits.max_model_len:
            raise BadRequest(f"the prompt has {len(prompt)} tokens; the context limit is {limits.max_model_len}")
    params = _per_item(body.get("sampling_params"), len(prompts), is_batch, "sampling_params", dict)
    rids = _per_item(body.get("rid"), len(prompts), is_batch, "rid", str)
    items = [GenerateItem(prompt, parse_sampling_params(p or {}, limits), rid)
             for prompt, p, rid in zip(prompts, params, rids)]
    return GenerateRequest(items, is_batch, _bool(body, "return_logprob", False),
                           _bool(body, "return_text_in_logprobs", False))


def parse_sampling_params(d: dict, limits: Limits) -> SamplingParams:
    check_fields(d, SAMPLING_FIELDS, NEUTRAL_SAMPLING_FIELDS, "sampling_params")
    params = SamplingParams(max_new_tokens=limits.default_max_new_tokens)
    if d.get("max_new_tokens") is not None:
        params.max_new_tokens = _int(d["max_new_tokens"], "max_new_tokens", 0, limits.max_new_tokens_limit)
    if d.get("temperature") is not None:
        params.temperature = _number(d["temperature"], "temperature", 0.0, math.inf)
    if d.get("top_p") is not None:
        params.top_p = _number(d["top_p"], "top_p", 0.0, 1.0)
        if params.top_p == 0.0:
            raise BadRequest("top_p must be in (0, 1]")
    if d.get("top_k") is not None:
        params.top_k = _int(d["top_k"], "top_k", -1, limits.vocab_size)
        if params.top_k == 0:
            raise BadRequest("top_k must be -1 (off) or at least 1")
    stop = d.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise BadRequest("stop must be a non-empty string or a list of non-empty strings")
        params.stop = stop
    if d.get("stop_token_ids") is not None:
        params.stop_token_ids = _token_ids(d["stop_token_ids"], limits.vocab_size, "stop_token_ids", allow_empty=True)
    for name in ("ignore_eos", "skip_special_tokens", "no_stop_trim"):
        setattr(params, name, _bool(d, name, getattr(params, name)))
    return params


def response(seq: Sequence, detokenizer: Detokenizer, text_in_logprobs: bool) -> dict:
    """SGLang's /generate response for one finished request."""
    meta = {
        "id": seq.rid,
        "finish_reason": seq.finish_reason(),
        "prompt_tokens": len(seq.prompt_ids),
        "completion_tokens": len(seq.output_ids),
        "cached_tokens": seq.cached_tokens,
        "weight_version": seq.weight_version,
        "e2e_latency": (seq.finish_time or seq.arrival_time) - seq.arrival_time,
    }
    if seq.return_logprob:
        texts = detokenizer.token_texts(seq.output_ids) if text_in_logprobs else [None] * len(seq.output_ids)
        meta["output_token_logprobs"] = [[lp, tok, text] for lp, tok, text in
                                         zip(seq.output_logprobs, seq.output_ids, texts)]
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
    prompts = [tokenizer.encode(t) for t in texts]
    if not all(prompts):
        raise BadRequest("a text prompt tokenizes to no tokens")
    return prompts, is_batch


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


def _int(value, name: str, low: int, high: int) -> int:
    if type(value) is not int:
        raise BadRequest(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise BadRequest(f"{name}={value} is outside [{low}, {high}]")
    return value


def _number(value, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise BadRequest(f"{name}={value} is outside [{low}, {high}]")
    return float(value)


def _bool(d: dict, name: str, default: bool) -> bool:
    value = d.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false, got {value!r}")
    return value

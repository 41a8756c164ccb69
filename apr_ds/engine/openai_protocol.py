"""The OpenAI-compatible requests and answers, in the shapes SGLang 0.5.23 serves them
(sglang/srt/entrypoints/openai/protocol.py, serving_completions.py, serving_chat.py, usage_processor.py).

Requests are pydantic models like SGLang's, so the same JSON is accepted, coerced and refused: unknown fields are
ignored (SGLang's CompletionRequest / ChatCompletionRequest do not forbid extras), wrong types are a 400 whose
`type` is "Bad Request" (http_server.py `validation_exception_handler`). Fields SGLang has but this server does
not implement are accepted only with their 'off' value (as in protocol.py), so a client gets a 400 rather than
silently losing what it asked for. Errors are SGLang's `ErrorResponse`: {"object": "error", "message", "type",
"param", "code"}.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Union

from pydantic import BaseModel, ValidationError, field_validator

from apr_ds.engine.protocol import BadRequest, check_fields, encode_text

DEFAULT_MODEL_NAME = "default"  # protocol.py DEFAULT_MODEL_NAME


class OpenAIError(BadRequest):
    """A refusal in SGLang's OpenAI error shape."""

    def __init__(self, message: str, err_type: str = "BadRequestError", code: int = 400):
        super().__init__(message)
        self.err_type, self.code = err_type, code

    def body(self) -> dict:
        return {"object": "error", "message": str(self), "type": self.err_type, "param": None, "code": self.code}


class StreamOptions(BaseModel):
    include_usage: Optional[bool] = False
    continuous_usage_stats: Optional[bool] = False


class _Sampling(BaseModel):
    model: str = DEFAULT_MODEL_NAME
    n: int = 1
    stop: Optional[Union[str, List[str]]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop_token_ids: Optional[List[int]] = None
    no_stop_trim: bool = False
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    rid: Optional[str] = None

    def sampling_params(self, max_new_tokens: int | None) -> dict:
        """SGLang's `_build_sampling_params`, the part this engine implements (protocol.parse_sampling_params)."""
        params = {"max_new_tokens": max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                  "top_k": self.top_k, "stop": self.stop, "stop_token_ids": self.stop_token_ids,
                  "ignore_eos": self.ignore_eos, "skip_special_tokens": self.skip_special_tokens,
                  "no_stop_trim": self.no_stop_trim, "n": self.n}
        return {k: v for k, v in params.items() if v is not None}


class CompletionRequest(_Sampling):
    prompt: Union[List[int], List[List[int]], str, List[str]]
    logprobs: Optional[int] = None
    max_tokens: int = 16
    return_token_ids: bool = False

    @field_validator("max_tokens")
    @classmethod
    def validate_max_tokens_positive(cls, v):
        if v is not None and v <= 0:
            raise ValueError("max_tokens must be positive")
        return v


class ChatMessage(BaseModel):
    role: str
    content: Optional[Union[str, List[Dict[str, Any]]]] = None


class ChatCompletionRequest(_Sampling):
    messages: List[ChatMessage]
    logprobs: bool = False
    max_tokens: Optional[int] = None
    max_completion_tokens: Optional[int] = None


# SGLang fields this server does not implement: accepted only with these values
NEUTRAL = {
    "echo": (False,), "best_of": (None, 1), "suffix": (None,), "seed": (None,), "frequency_penalty": (0,),
    "presence_penalty": (0,), "min_p": (0,), "min_tokens": (0,), "repetition_penalty": (1,), "regex": (None,),
    "json_schema": (None,), "ebnf": (None,), "logit_bias": (None, {}), "response_format": (None,),
    "lora_path": (None,), "stop_regex": (None, [], ""), "return_hidden_states": (False,), "custom_params": (None,),
    "custom_logit_processor": (None,), "top_logprobs": (None, 0), "tools": (None, []),
    "tool_choice": (None, "none", "auto"), "session_params": (None,), "watermark": (None,),
}


def parse(model: type[BaseModel], body) -> BaseModel:
    if not isinstance(body, dict):
        raise OpenAIError("the request body must be a JSON object", "Bad Request")
    try:
        request = model.model_validate(body)
    except ValidationError as e:
        raise OpenAIError(str(e), "Bad Request") from None
    try:
        check_fields({k: v for k, v in body.items() if k in NEUTRAL}, set(), NEUTRAL, "request")
    except BadRequest as e:
        raise OpenAIError(str(e)) from None
    return request


def prompts_of(request: CompletionRequest, tokenizer) -> list[list[int]]:
    """The token ids of each prompt: text (tokenized as SGLang does, with the tokenizer's special tokens), token
    ids, or a list of either (serving_completions.py `_validate_request`, `_convert_to_internal_request`)."""
    prompt = request.prompt
    if not prompt or (isinstance(prompt, list) and all(not p for p in prompt)):
        raise OpenAIError("Prompt cannot be empty")
    items = [prompt] if isinstance(prompt, str) or isinstance(prompt[0], int) else prompt
    if any(isinstance(p, str) for p in items) and tokenizer is None:
        raise OpenAIError("this server has no tokenizer (none in the model directory): send token ids")
    try:
        ids = [encode_text(tokenizer, p) if isinstance(p, str) else list(p) for p in items]
    except BadRequest as e:
        raise OpenAIError(str(e)) from None
    if not all(ids):
        raise OpenAIError("a prompt is empty or tokenizes to no tokens")
    return ids


def chat_prompt(request: ChatCompletionRequest, tokenizer) -> list[int]:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise OpenAIError("this model's tokenizer has no chat template (no chat_template in tokenizer_config.json), "
                          "so /v1/chat/completions cannot build a prompt; use /v1/completions or /generate",
                          "BadRequest")  # SGLang's type for this refusal
    messages = [{"role": m.role, "content": _content_text(m.content)} for m in request.messages]
    try:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    except Exception as e:  # a template that rejects these messages (roles, order)
        raise OpenAIError(f"the chat template failed on these messages: {e}") from None
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # newer transformers return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def _content_text(content) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        raise OpenAIError("only text message content is supported by this server")
    return "".join(str(p.get("text", "")) for p in content)


# ---------------------------------------------------------------------------- answers


def usage(outputs: list[dict], n: int) -> dict:
    """UsageProcessor.calculate_response_usage: a prompt counts once for its n samples."""
    completion = sum(o["meta_info"]["completion_tokens"] for o in outputs)
    prompt = sum(outputs[i]["meta_info"]["prompt_tokens"] for i in range(0, len(outputs), n))
    return {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion,
            "prompt_tokens_details": None, "reasoning_tokens": 0, "completion_tokens_details": None}


def finish_fields(meta: dict) -> dict:
    reason = meta["finish_reason"]
    return {"finish_reason": reason["type"] if reason else None,
            "matched_stop": reason["matched"] if reason and "matched" in reason else None}


def logprobs_of(token_logprobs: list) -> dict:
    """utils.py `to_openai_style_logprobs` for (logprob, token id, text) triples, no top logprobs."""
    return {"text_offset": [-1] * len(token_logprobs), "token_logprobs": [t[0] for t in token_logprobs],
            "tokens": [t[2] for t in token_logprobs], "top_logprobs": []}


def completion_choice(index: int, text: str, meta: dict, token_logprobs: list | None, token_ids: list | None = None,
                      prompt_token_ids: list | None = None) -> dict:
    """CompletionResponseChoice / CompletionResponseStreamChoice: token_ids and prompt_token_ids only when asked
    for (return_token_ids), the latter only in a stream's first chunk."""
    choice = {"index": index, "text": text,
              "logprobs": logprobs_of(token_logprobs) if token_logprobs is not None else None, **finish_fields(meta)}
    if token_ids is not None:
        choice["token_ids"] = token_ids
    if prompt_token_ids is not None:
        choice["prompt_token_ids"] = prompt_token_ids
    return choice


def chat_choice(index: int, text: str, meta: dict) -> dict:
    return {"index": index, "message": {"role": "assistant", "content": text, "reasoning_content": None},
            "logprobs": None, **finish_fields(meta)}


def envelope(kind: str, rid: str, model: str, choices: list, created: int | None = None, **extra) -> dict:
    return {"id": rid, "object": kind, "created": created or int(time.time()), "model": model, "choices": choices,
            **extra}

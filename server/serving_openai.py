"""OpenAI-compatible `/v1/completions`, `/v1/chat/completions` and `/v1/models`.

The `openai` client works unchanged; unmaskd's knobs go in `extra_body` (`sampler`,
`sampler_params`, `block_length`, `steps`, `stop_at_eos`, `ab`, `reference`). Mapping:

- `max_tokens` (chat also `max_completion_tokens`) is the canvas length: a dLLM decodes a
  fixed-size canvas, and the answer is the text before the first EOS in it.
- `temperature` defaults to 0 (greedy), not OpenAI's 1. `seed` makes sampling reproducible.
- `stop_at_eos` defaults to true, as on /generate: the text is the same (decided tokens never
  change) and decoding ends as soon as everything before the first EOS is decided.
- `stop` strings are applied to the decoded text, which is cut before the earliest one
  (finish_reason "stop").
- `usage.completion_tokens` counts canvas tokens up to and including the first EOS, or the
  whole canvas without one: the tokens that make up the answer, whatever it cost to decode.
- finish_reason: "stop" (EOS or a stop string), "length" (canvas full without EOS).
- Streaming: a dLLM does not produce text left to right, so the text is sent once, when the
  canvas is done: chat sends the assistant role chunk at once, then one chunk with the whole
  content and the finish_reason; completions send one chunk with the text and finish_reason.
  Nothing is sent per denoising step (use /generate's stream for that). With
  `stream_options.include_usage` a last chunk carries usage. Then `data: [DONE]`.
- Fields with no meaning for a dLLM are refused with a 400 naming the field: n > 1, best_of > 1,
  logprobs / top_logprobs, non-zero presence / frequency penalties, logit_bias, tools /
  tool_choice / functions / function_call, echo, suffix, top_p < 1, a non-text response_format
  (the OpenAPI document gives the values accepted). Unknown fields are refused with a 400 as
  OpenAI does; bad values are a 422.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from unmaskd.server.protocol import (
    NO_LOGPROBS,
    NO_PENALTY,
    NO_TOOLS,
    ApiError,
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    OpenAIRequest,
    UnmaskdInfo,
    Usage,
    error_responses,
    openai_error,
    sse_response,
)
from unmaskd.server.serving_generate import (
    SSE_DONE,
    Completed,
    GenerationService,
    JobStream,
    Prepared,
    sse,
)

router = APIRouter(prefix="/v1", tags=["openai"])
_REFUSALS = error_responses(400, 401, 404, 413, 422, 429, 500, 503, openai=True, why={
    400: "The body cannot be read as JSON, or asks for what a dLLM cannot do (n > 1, "
         "logprobs, tools, penalties, ...: the field is named) or for a field OpenAI does not "
         "have.",
    404: "The model is not the one this server serves."})

_NO_LOGPROBS = f"not supported: {NO_LOGPROBS}"
_NO_TOOLS = f"not supported: {NO_TOOLS}"
_NO_PENALTY = f"not supported: {NO_PENALTY}"


def _unsupported(body: OpenAIRequest) -> tuple[str, str] | None:
    """The first field that makes no sense for this server, with the reason. The schema of
    each (protocol.only) lists the values accepted here."""
    checks: list[tuple[str, bool, str]] = [
        ("n", body.n not in (None, 1), "only n = 1 is supported; send one request per sample"),
        ("presence_penalty", body.presence_penalty not in (None, 0), _NO_PENALTY),
        ("frequency_penalty", body.frequency_penalty not in (None, 0), _NO_PENALTY),
        ("logit_bias", bool(body.logit_bias), "not supported"),
        ("top_p", body.top_p not in (None, 1),
         "not supported (no nucleus sampling); use temperature"),
    ]
    if isinstance(body, CompletionRequest):
        checks += [
            ("best_of", body.best_of not in (None, 1), "only best_of = 1 is supported"),
            ("logprobs", bool(body.logprobs), _NO_LOGPROBS),
            ("echo", bool(body.echo), "not supported"),
            ("suffix", body.suffix is not None,
             "not supported (no insertion); put all the text in the prompt"),
        ]
    else:
        assert isinstance(body, ChatCompletionRequest)
        fmt = (body.response_format or {}).get("type", "text")
        checks += [
            ("logprobs", bool(body.logprobs), _NO_LOGPROBS),
            ("top_logprobs", body.top_logprobs is not None, _NO_LOGPROBS),
            ("tools", bool(body.tools), _NO_TOOLS),
            ("tool_choice", body.tool_choice not in (None, "none"), _NO_TOOLS),
            ("functions", bool(body.functions), _NO_TOOLS),
            ("function_call", body.function_call not in (None, "none"), _NO_TOOLS),
            ("response_format", fmt != "text", "only text responses are supported"),
        ]
    for field, bad, why in checks:
        if bad:
            return field, why
    return None


def _check(body: OpenAIRequest, service: GenerationService) -> None:
    if (refused := _unsupported(body)) is not None:
        field, why = refused
        raise ApiError(400, field, why, code="unsupported")
    if body.model != service.model_name:
        raise ApiError(404, "model", f"the model {body.model!r} does not exist; this server "
                       f"serves {service.model_name!r}", code="model_not_found")


async def _completion_prompt(body: CompletionRequest,
                             service: GenerationService) -> list[int]:
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], list | str):
        if len(prompt) != 1:
            raise ApiError(400, "prompt", "one prompt per request is supported; send "
                           "several requests (they are batched together)", code="unsupported")
        prompt = prompt[0]
    if isinstance(prompt, str):
        return await service.encode_text(prompt, "prompt")
    return list(prompt)  # token ids; the engine checks them against the vocabulary


def _cut_at_stop(text: str, stop: str | list[str] | None) -> tuple[str, bool]:
    stops = [stop] if isinstance(stop, str) else (stop or [])
    hits = [i for s in stops if s and (i := text.find(s)) >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


def _usage(c: Completed, eos_id: int) -> Usage:
    tokens = c.result.token_ids
    completion = tokens.index(eos_id) + 1 if eos_id in tokens else len(tokens)
    return Usage(prompt_tokens=c.prepared.prompt_tokens, completion_tokens=completion,
                 total_tokens=c.prepared.prompt_tokens + completion)


def _info(c: Completed) -> UnmaskdInfo:
    p, res = c.prepared, c.result
    return UnmaskdInfo(sampler=p.sampler, sampler_params=p.vr.params.model_dump(mode="json"),
                       arm=p.arm, nfe=res.nfe, tokens_per_step=res.tokens_per_step,
                       warnings=p.warnings)


def _text(c: Completed, stop: str | list[str] | None) -> tuple[str, str]:
    text, stopped = _cut_at_stop(c.result.text, stop)
    return text, "stop" if stopped or c.result.finish_reason == "stop" else "length"


def _prepare(body: OpenAIRequest, service: GenerationService, prompt_ids: list[int],
             gen_length: int | None, length_field: str, prompt_field: str,
             id_prefix: str) -> Prepared:
    return service.prepare(
        prompt_ids, body, gen_length=gen_length, temperature=body.temperature or 0.0,
        stop_at_eos=body.stop_at_eos, watch=False, id_prefix=id_prefix,
        fields={"prompt": prompt_field, "gen_length": length_field})


Render = Callable[[Completed | None], list[dict[str, Any]]]


async def _run(body: OpenAIRequest, service: GenerationService, prepared: Prepared,
               request: Request, render: Render) -> Completed | JobStream:
    """Submit, then answer in one piece or as an SSE stream; `render(completed)` gives the
    chunks of a finished stream (the opening chunk, if any, is render(None))."""
    job = service.submit(prepared)
    if not body.stream:
        return service.complete(prepared, await service.wait(job, request))

    async def stream() -> AsyncIterator[str]:
        try:
            for chunk in render(None):
                yield sse(chunk)
            async for item in service.events(job):
                for chunk in render(service.complete(prepared, item)):
                    yield sse(chunk)
        except ApiError as e:
            yield sse(openai_error(e.status, e.field, e.message, e.code))
        yield SSE_DONE

    return JobStream(stream(), job, service.scheduler)


@router.post("/completions", response_model=None, responses={
    **sse_response("The completion; with \"stream\": true, server-sent events of it",
                   CompletionResponse),
    **_REFUSALS})
async def completions(body: CompletionRequest, request: Request):
    service: GenerationService = request.app.state.service
    _check(body, service)
    prepared = _prepare(body, service, await _completion_prompt(body, service), body.max_tokens,
                        "max_tokens", "prompt", "cmpl")
    created, eos = int(time.time()), service.engine.eos_id
    include_usage = body.stream_options is not None and body.stream_options.include_usage

    def response(c: Completed, stream: bool) -> dict[str, Any]:
        text, reason = _text(c, body.stop)
        usage = None if stream and not include_usage else _usage(c, eos)
        return CompletionResponse(
            id=prepared.id, created=created, model=service.model_name,
            choices=[CompletionChoice(text=text, finish_reason=reason)], usage=usage,
            unmaskd=_info(c)).model_dump(mode="json")

    def render(c: Completed | None) -> list[dict[str, Any]]:
        return [] if c is None else [response(c, stream=True)]

    out = await _run(body, service, prepared, request, render)
    return out if isinstance(out, JobStream) else response(out, stream=False)


@router.post("/chat/completions", response_model=None, responses={
    **sse_response("The chat completion; with \"stream\": true, server-sent chunks of it",
                   ChatCompletionResponse),
    **_REFUSALS})
async def chat_completions(body: ChatCompletionRequest, request: Request):
    service: GenerationService = request.app.state.service
    _check(body, service)
    length = body.max_completion_tokens if body.max_completion_tokens is not None \
        else body.max_tokens
    length_field = "max_completion_tokens" if body.max_completion_tokens is not None \
        else "max_tokens"
    prompt_ids = await service.encode_messages(body.messages, "messages")
    prepared = _prepare(body, service, prompt_ids, length, length_field, "messages", "chatcmpl")
    created, eos = int(time.time()), service.engine.eos_id
    include_usage = body.stream_options is not None and body.stream_options.include_usage

    def chunk(delta: ChatDelta | None, reason: str | None = None, **extra: Any) -> dict[str, Any]:
        choices = [] if delta is None else [ChatChunkChoice(delta=delta, finish_reason=reason)]
        return ChatCompletionChunk(id=prepared.id, created=created, model=service.model_name,
                                   choices=choices, **extra).model_dump(mode="json")

    def render(c: Completed | None) -> list[dict[str, Any]]:
        if c is None:
            return [chunk(ChatDelta(role="assistant", content=""))]
        text, reason = _text(c, body.stop)
        out = [chunk(ChatDelta(content=text), reason, unmaskd=_info(c))]
        if include_usage:
            out.append(chunk(None, usage=_usage(c, eos)))
        return out

    out = await _run(body, service, prepared, request, render)
    if isinstance(out, JobStream):
        return out
    text, reason = _text(out, body.stop)
    return ChatCompletionResponse(
        id=prepared.id, created=created, model=service.model_name,
        choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=reason)],
        usage=_usage(out, eos), unmaskd=_info(out)).model_dump(mode="json")


@router.get("/models", responses=error_responses(401, openai=True))
async def models(request: Request) -> dict[str, Any]:
    service: GenerationService = request.app.state.service
    return {"object": "list", "data": [{
        "id": service.model_name, "object": "model", "created": service.started,
        "owned_by": "unmaskd",
        "max_model_len": service.engine.cfg.max_sequence_length}]}

"""OpenAI-compatible `/v1/completions`, `/v1/chat/completions`, `/v1/models` and
`/v1/models/{id}`.

The `openai` client works unchanged; unmaskd's knobs go in `extra_body` (`sampler`,
`sampler_params`, `block_length`, `steps`, `steps_per_block`, `stop_at_eos`, `ab`,
`reference`). Mapping:

- `max_tokens` (chat also `max_completion_tokens`) is the canvas length: a dLLM decodes a
  fixed-size canvas, and the answer is the text before the first EOS in it.
- `temperature` defaults to 0 (greedy), not OpenAI's 1. `seed` makes sampling reproducible.
- `stop_at_eos` defaults to true, as on /generate: the text is the same (decided tokens never
  change) and decoding ends as soon as everything before the first EOS is decided.
- `stop` strings are applied to the decoded text, which is cut before the earliest one
  (finish_reason "stop").
- `usage.completion_tokens` counts the canvas tokens before the first EOS (or stop token), the
  whole canvas without one: the tokens the answer is made of (0 for an empty answer), whatever
  it cost to decode.
- finish_reason: "stop" (EOS or a stop string), "length" (canvas full without EOS).
- Streaming, as vLLM streams: a chunk per denoising step that made text final, carrying that
  text. A dLLM never changes a committed token, so the text is final up to the first position
  still masked: each chunk carries the committed run from the canvas's left that the previous
  chunks did not (held back: an incomplete UTF-8 character, and with `stop` strings the last
  len(longest) - 1 characters, which a later token could make into one). The last chunk
  carries the rest, the finish_reason and `unmaskd` (nfe, ...). Chat opens with the assistant
  role. With `stream_options.include_usage` one more chunk follows, with `choices: []` and the
  usage, as OpenAI sends it; then `data: [DONE]`. /generate's stream shows the whole canvas
  per step instead.
- Fields with no meaning for a dLLM are refused with a 400 naming the field: n > 1, best_of > 1,
  logprobs / top_logprobs, non-zero presence / frequency penalties, logit_bias, tools /
  tool_choice / functions / function_call, echo, suffix, top_p < 1, a non-text response_format
  (the OpenAPI document gives the values accepted). Unknown fields are refused with a 400 as
  OpenAI does; bad values are a 422.
- `/v1/models/{id}`: the model object, or a 404 in OpenAI's error shape for another id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from unmaskd.engine.loop import Engine, StepEvent
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

log = logging.getLogger(__name__)
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


def _not_served(model: str, service: GenerationService) -> ApiError:
    return ApiError(404, "model", f"the model {model!r} does not exist; this server serves "
                    f"{service.model_name!r}", code="model_not_found")


def _check(body: OpenAIRequest, service: GenerationService) -> None:
    if (refused := _unsupported(body)) is not None:
        field, why = refused
        raise ApiError(400, field, why, code="unsupported")
    if body.model != service.model_name:
        raise _not_served(body.model, service)


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


def _stops(stop: str | list[str] | None) -> list[str]:
    return [s for s in ([stop] if isinstance(stop, str) else (stop or [])) if s]


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [i for s in stops if (i := text.find(s)) >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


def _answer_tokens(token_ids: list[int], stop_ids: list[int]) -> int:
    """Canvas tokens before the first EOS or stop token: the tokens the answer is made of."""
    return next((i for i, t in enumerate(token_ids) if t in stop_ids), len(token_ids))


def _usage(c: Completed, stop_ids: list[int]) -> Usage:
    completion = _answer_tokens(c.result.token_ids, stop_ids)
    return Usage(prompt_tokens=c.prepared.prompt_tokens, completion_tokens=completion,
                 total_tokens=c.prepared.prompt_tokens + completion)


def _info(c: Completed) -> UnmaskdInfo:
    p, res = c.prepared, c.result
    return UnmaskdInfo(sampler=p.sampler, sampler_params=p.vr.params.model_dump(mode="json"),
                       arm=p.arm, nfe=res.nfe, tokens_per_step=res.tokens_per_step,
                       warnings=p.warnings)


def _text(c: Completed, stops: list[str]) -> tuple[str, str]:
    text, stopped = _cut_at_stop(c.result.text, stops)
    return text, "stop" if stopped or c.result.finish_reason == "stop" else "length"


class FinalText:
    """The text of a canvas being denoised that can no longer change, for streaming. A
    committed token never changes, so the text is final up to the canvas's first masked
    position, or complete at its first EOS or stop token (the text ends there, as the
    result's does). Held back until later tokens settle them: an incomplete UTF-8 character
    at the end (it decodes to U+FFFD until its last byte is committed) and, with stop strings,
    the last len(longest) - 1 characters, which a later token could complete into a stop
    string that starts before anything already sent ends."""

    def __init__(self, engine: Engine, stops: list[str]):
        self.engine = engine
        self.stops = stops
        self.hold = max(map(len, stops), default=1) - 1
        self.sent = ""
        self._seen: tuple[int, bool] = (0, False)  # the last (end, complete): decode on change

    def advance(self, canvas: list[int]) -> str:
        """The text that became final since the last call ("" if none)."""
        e = self.engine
        end = next((i for i, t in enumerate(canvas) if t == e.mask_id or t in e.stop_ids),
                   len(canvas))
        complete = end == len(canvas) or canvas[end] != e.mask_id
        if (end, complete) == self._seen:
            return ""
        self._seen = (end, complete)
        text = e.tokenizer.decode(canvas[:end], skip_special_tokens=False)
        if not complete:
            text = text.rstrip("\ufffd")
        cut = _cut_at_stop(text, self.stops)[0]
        if not complete:  # a stop string may yet start in the last `hold` characters
            cut = cut[:max(0, len(text) - self.hold)]
        return self._extend(cut)

    def finish(self, text: str) -> str:
        """The rest of the response's final text (stop strings applied)."""
        rest = self._extend(text)
        if self.sent != text:  # a tokenizer whose decoding of a prefix is no prefix
            log.warning("streamed text %r is not a prefix of the result %r", self.sent, text)
        return rest

    def _extend(self, text: str) -> str:
        if not text.startswith(self.sent):
            return ""
        new, self.sent = text[len(self.sent):], text
        return new


def _prepare(body: OpenAIRequest, service: GenerationService, prompt_ids: list[int],
             gen_length: int | None, length_field: str, prompt_field: str,
             id_prefix: str) -> Prepared:
    return service.prepare(
        prompt_ids, body, gen_length=gen_length, temperature=body.temperature or 0.0,
        stop_at_eos=body.stop_at_eos, watch=body.stream, id_prefix=id_prefix,
        fields={"prompt": prompt_field, "gen_length": length_field})


@dataclass
class Chunks:
    """How one endpoint shapes its stream's chunks."""

    opening: list[dict[str, Any]]  # sent at once
    text: Callable[[str], dict[str, Any]]  # text that became final
    last: Callable[[str, str, Completed], dict[str, Any]]  # the rest, finish_reason
    usage: Callable[[Usage], dict[str, Any]]  # choices [] and usage


async def _run(body: OpenAIRequest, service: GenerationService, prepared: Prepared,
               request: Request, chunks: Chunks) -> Completed | JobStream:
    """Submit, then answer in one piece or as an SSE stream of `chunks`."""
    job = service.submit(prepared)
    if not body.stream:
        return service.complete(prepared, await service.wait(job, request))
    stops = _stops(body.stop)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    final = FinalText(service.engine, stops)

    async def stream() -> AsyncIterator[str]:
        try:
            for chunk in chunks.opening:
                yield sse(chunk)
            async for item in service.events(job):
                if isinstance(item, StepEvent):
                    if new := final.advance(item.canvas):
                        yield sse(chunks.text(new))
                    continue
                completed = service.complete(prepared, item)
                text, reason = _text(completed, stops)
                yield sse(chunks.last(final.finish(text), reason, completed))
                if include_usage:
                    yield sse(chunks.usage(_usage(completed, service.engine.stop_ids)))
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
    created, stop_ids = int(time.time()), service.engine.stop_ids

    def response(choices: list[CompletionChoice], usage: Usage | None = None,
                 info: UnmaskdInfo | None = None) -> dict[str, Any]:
        return CompletionResponse(id=prepared.id, created=created, model=service.model_name,
                                  choices=choices, usage=usage, unmaskd=info
                                  ).model_dump(mode="json")

    chunks = Chunks(
        opening=[],
        text=lambda text: response([CompletionChoice(text=text, finish_reason=None)]),
        last=lambda text, reason, c: response(
            [CompletionChoice(text=text, finish_reason=reason)], info=_info(c)),
        usage=lambda usage: response([], usage=usage))
    out = await _run(body, service, prepared, request, chunks)
    if isinstance(out, JobStream):
        return out
    text, reason = _text(out, _stops(body.stop))
    return response([CompletionChoice(text=text, finish_reason=reason)],
                    usage=_usage(out, stop_ids), info=_info(out))


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
    created, stop_ids = int(time.time()), service.engine.stop_ids

    def chunk(delta: ChatDelta | None, reason: str | None = None, **extra: Any) -> dict[str, Any]:
        choices = [] if delta is None else [ChatChunkChoice(delta=delta, finish_reason=reason)]
        return ChatCompletionChunk(id=prepared.id, created=created, model=service.model_name,
                                   choices=choices, **extra).model_dump(mode="json")

    chunks = Chunks(
        opening=[chunk(ChatDelta(role="assistant", content=""))],
        text=lambda text: chunk(ChatDelta(content=text)),
        last=lambda text, reason, c: chunk(ChatDelta(content=text or None), reason,
                                           unmaskd=_info(c)),
        usage=lambda usage: chunk(None, usage=usage))
    out = await _run(body, service, prepared, request, chunks)
    if isinstance(out, JobStream):
        return out
    text, reason = _text(out, _stops(body.stop))
    return ChatCompletionResponse(
        id=prepared.id, created=created, model=service.model_name,
        choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=reason)],
        usage=_usage(out, stop_ids), unmaskd=_info(out)).model_dump(mode="json")


def _model_card(service: GenerationService) -> dict[str, Any]:
    return {"id": service.model_name, "object": "model", "created": service.started,
            "owned_by": "unmaskd", "max_model_len": service.engine.cfg.max_sequence_length}


@router.get("/models", responses=error_responses(401, openai=True))
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_model_card(request.app.state.service)]}


@router.get("/models/{model_id:path}", responses=error_responses(
    401, 404, openai=True, why={404: "The model is not the one this server serves."}))
async def model(model_id: str, request: Request) -> dict[str, Any]:
    """One model, as OpenAI's `GET /v1/models/{model}` (`client.models.retrieve`)."""
    service: GenerationService = request.app.state.service
    if model_id != service.model_name:
        raise _not_served(model_id, service)
    return _model_card(service)

"""Request, response and error bodies of the HTTP API, and the one client-error type.

`/generate` is unmaskd's own API and rejects unknown fields (a misspelt knob should not be
silently ignored). The `/v1` bodies follow OpenAI's and also reject unknown fields, as OpenAI
does; unmaskd's decoding knobs ride along in them (the `openai` client's `extra_body`). Request
models are strict: booleans and numbers must be JSON booleans and numbers (`"stream": "yes"` or
`1` is a 422, not a true). The schemas say what the server checks on its own (bounds, "prompt or
messages"); what depends on the loaded model, the sampler registry or the A/B experiments is a
422 the schema cannot foresee (see `ERRORS`). The OpenAI fields a dLLM has no use for are
declared with the values the server takes (`only`), so a body the schema allows is never
refused by name with a 400.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

MAX_SEED = 2**63 - 1  # the engine keeps seeds in int64 tensors
MAX_TEMPERATURE = 100.0  # the engine's bound (engine.sequence.validate)


def check_finite(value: Any) -> Any:
    """Reject NaN and infinities anywhere in a JSON value (Python's JSON parser accepts them,
    and they cannot be echoed back as valid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite")
    if isinstance(value, dict):
        for v in value.values():
            check_finite(v)
    elif isinstance(value, list):
        for v in value:
            check_finite(v)
    return value


def lone_surrogate(text: str) -> str | None:
    """Why `text` is no Unicode text to tokenize, or None: JSON can carry a lone surrogate
    ("\\ud800")."""
    try:
        text.encode()
    except UnicodeEncodeError as e:
        return (f"is not valid Unicode text: a lone surrogate \\u{ord(text[e.start]):04x} at "
                f"character {e.start}")
    return None


def only(*accepted: dict[str, Any], why: str) -> WithJsonSchema:
    """The documented schema of a field declared only to be refused by name (serving_openai):
    the values the server takes (`accepted` JSON schemas, or null). Validation still accepts
    any value of the field's type, so that the handler can name it with a 400 and say why."""
    return WithJsonSchema({"anyOf": [*accepted, {"type": "null"}],
                           "description": f"not supported: {why}"})


class ApiError(Exception):
    """A request the server refuses; rendered as JSON naming `field` (OpenAI's error shape on
    /v1, `{"detail", "field"}` elsewhere)."""

    def __init__(self, status: int, field: str | None, message: str,
                 headers: dict[str, str] | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message
        self.headers = headers
        self.code = code


class Health(BaseModel):
    status: str = Field(description='"ok", else why not')
    cache: str | None = Field(None, description="the engine's KV cache mode, when serving")


class ErrorItem(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """A refusal outside /v1."""

    detail: str = Field(description="what is wrong, after the field's name")
    field: str | None = Field(description="the request field at fault, if one is")
    errors: list[ErrorItem] | None = Field(
        None, description="every problem, when the body fails its schema")


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(BaseModel):
    """A refusal on /v1, in OpenAI's shape."""

    error: OpenAIErrorDetail
    errors: list[ErrorItem] | None = Field(
        None, description="every problem, when the body fails its schema")


ERRORS = {
    400: "The body cannot be read as JSON: not JSON, not UTF-8, nested too deep, an integer "
         "too long to convert, or not sent as JSON.",
    401: "The server runs with --api-key and the request lacks 'Authorization: Bearer KEY'.",
    404: "No such resource.",
    413: "The body is larger than --max-body-bytes.",
    422: "A field is invalid; `field` names it. Besides the schema this covers what depends on "
         "the model and the server: prompt + canvas within the model's context, block_length "
         "dividing the canvas, steps a multiple of the blocks, registered samplers and their "
         "params, defined A/B experiments, and a chat the model's template can render.",
    429: "The batch and the queue are full; retry after Retry-After seconds.",
    500: "Decoding failed on the server.",
    503: "The server is shutting down (with Retry-After), or its engine loop has stopped.",
}


def error_responses(*statuses: int, openai: bool = False,
                    why: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these refusals (`why` overrides the descriptions in ERRORS)."""
    model = OpenAIErrorBody if openai else ErrorBody
    return {s: {"model": model, "description": {**ERRORS, **(why or {})}[s]} for s in statuses}


def sse_response(description: str, model: type[BaseModel] | None = None
                 ) -> dict[int | str, dict[str, Any]]:
    """A 200 that is JSON (`model`, else the route's response model), or server-sent events
    with "stream": true."""
    extra = {} if model is None else {"model": model}
    event = {"type": "object", "required": ["data"],  # one event; its data is JSON or [DONE]
             "properties": {"data": {"type": "string"}}}
    return {200: {**extra, "description": description,
                  "content": {"text/event-stream": {"schema": event}}}}


def openai_error(status: int, field: str | None, message: str,
                 code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
    kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": field, "code": code}}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class DecodingOptions(BaseModel):
    """unmaskd's decoding knobs, shared by /generate and the /v1 endpoints."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    sampler: str | None = Field(None, min_length=1,
                                description="registered sampler; default (null): the server's")
    sampler_params: dict[str, Any] = Field(default_factory=dict)
    block_length: int | None = Field(None, ge=1, description="default: canvas length / 4")
    steps: int | None = Field(
        None, ge=1, description="step budget, a multiple of the blocks the canvas spans, split "
                                "evenly over them; default: one step per position")
    steps_per_block: int | None = Field(
        None, ge=1, description="instead of steps: each block's step budget (at most the block "
                                "length), whatever the prompt's length")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    ab: str | None = Field(None, description="A/B experiment: its arm picks the sampler")
    user: str | None = Field(None, description="stable A/B assignment key")
    reference: int | None = Field(
        None, description="expected final answer, scored with the checker of the served model's "
                          "task (the one its unmaskd_task.json names; arithmetic without one)")

    _finite_params = field_validator("sampler_params")(check_finite)


class GenerateRequest(DecodingOptions):
    """Exactly one of `prompt` and `messages` (the other absent or null)."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
        {"required": ["messages"], "properties": {"messages": {"type": "array"}}}]})

    prompt: str | None = Field(None, min_length=1)
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    max_new_tokens: int | None = Field(None, ge=1, description="canvas length")
    temperature: float = Field(0.0, ge=0, le=MAX_TEMPERATURE)
    stop_at_eos: bool = True
    stream: bool = False
    return_trace: bool = False


WARNINGS = ("what the client should know about how the request decoded, each naming its field "
            "(e.g. a learned policy used outside the block setting it was trained for)")


class Timing(BaseModel):
    queue_s: float
    total_s: float


class GenerateResponse(BaseModel):
    id: str
    text: str
    token_ids: list[int]
    finish_reason: str
    sampler: str
    sampler_params: dict[str, Any]
    arm: str | None
    nfe: int
    tokens_per_step: float
    correct: bool | None = Field(None, description="answer check, when reference was given")
    warnings: list[str] = Field(default_factory=list, description=WARNINGS)
    trace: list[int] | None = None
    step_counts: list[int] | None = None
    timing: Timing


# ---- OpenAI-compatible bodies ----------------------------------------------------------------
class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)

    include_usage: bool = False


# Why such fields are refused (serving_openai's 400s and the schema's descriptions).
NO_LOGPROBS = ("a diffusion LM commits tokens in parallel over many steps, so there are no "
               "per-token log-probabilities of the final text")
NO_TOOLS = "no tool or function calling"
NO_PENALTY = "penalties over earlier tokens assume left-to-right decoding"
_ZERO = {"type": "number", "minimum": 0, "maximum": 0}
_EMPTY_LIST = {"type": "array", "maxItems": 0}
_NONE = {"const": "none"}


class OpenAIRequest(DecodingOptions):
    """Fields common to completions and chat. Fields that have no meaning for a dLLM are
    declared so that they can be refused by name with a 400 (see serving_openai)."""

    model: str = Field(description="the served model's name (GET /v1/models)")
    max_tokens: int | None = Field(None, ge=1, description="canvas length")
    temperature: float | None = Field(None, ge=0, le=MAX_TEMPERATURE)
    top_p: Annotated[float | None, only({"type": "number", "minimum": 1, "maximum": 1},
                                        why="nucleus sampling; use temperature")] = None
    n: Annotated[int | None, only({"const": 1}, why="one sample per request")] = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Annotated[float | None, only(_ZERO, why=NO_PENALTY)] = None
    frequency_penalty: Annotated[float | None, only(_ZERO, why=NO_PENALTY)] = None
    logit_bias: Annotated[dict[str, float] | None,
                          only({"type": "object", "maxProperties": 0}, why="logit bias")] = None
    stop_at_eos: bool = True


def prompt_schema(vocab_size: int | None = None) -> dict[str, Any]:
    """A completion prompt: text, or token ids (below `vocab_size` when known: the app writes
    the served model's into its OpenAPI document), alone or as a batch of one. Several
    prompts are refused by name (send one request each; the server batches them)."""
    token = {"type": "integer", "minimum": 0,
             **({} if vocab_size is None else {"maximum": vocab_size - 1})}
    tokens = {"type": "array", "items": token, "minItems": 1}
    return {"anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
         "maxItems": 1},
        tokens, {"type": "array", "items": tokens, "minItems": 1, "maxItems": 1}]}


class CompletionRequest(OpenAIRequest):
    prompt: Annotated[str | list[str] | list[int] | list[list[int]],
                      WithJsonSchema(prompt_schema())]
    logprobs: Annotated[int | None, only({"const": 0}, why=NO_LOGPROBS)] = None
    best_of: Annotated[int | None, only({"const": 1}, why="one sample per request")] = None
    echo: Annotated[bool | None, only({"const": False}, why="echoing the prompt")] = None
    suffix: Annotated[str | None, only(why="insertion; put all the text in the prompt")] = None


class ChatCompletionRequest(OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: Annotated[bool | None, only({"const": False}, why=NO_LOGPROBS)] = None
    top_logprobs: Annotated[int | None, only(why=NO_LOGPROBS)] = None
    tools: Annotated[list[Any] | None, only(_EMPTY_LIST, why=NO_TOOLS)] = None
    tool_choice: Annotated[Any, only(_NONE, why=NO_TOOLS)] = None
    functions: Annotated[list[Any] | None, only(_EMPTY_LIST, why=NO_TOOLS)] = None
    function_call: Annotated[Any, only(_NONE, why=NO_TOOLS)] = None
    response_format: Annotated[dict[str, Any] | None, only(
        {"type": "object", "properties": {"type": {"const": "text"}}},
        why="structured output; only text")] = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UnmaskdInfo(BaseModel):
    """How the answer was decoded (an extra field; OpenAI clients keep it as an attribute)."""

    sampler: str
    sampler_params: dict[str, Any]
    arm: str | None
    nfe: int
    tokens_per_step: float
    warnings: list[str] = Field(default_factory=list, description=WARNINGS)


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    unmaskd: UnmaskdInfo | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    unmaskd: UnmaskdInfo


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    unmaskd: UnmaskdInfo | None = None

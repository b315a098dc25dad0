"""The generation path shared by every endpoint, and unmaskd's own `POST /generate`.

`GenerationService` turns a prompt plus decoding options into a validated engine request (A/B
arm applied, errors as 422 naming the client's field), submits it to the engine thread, waits
for it while watching for the client to disconnect (which cancels it), and records completed
requests in their A/B experiment.

`/generate` with `"stream": true` answers with server-sent events: one per denoising step,
`{"step", "committed", "canvas"}` with undecided positions shown as "░" (one per token) and
EOS as "·", then one event with the same object a non-streaming call returns, then
`data: [DONE]`. An error after the stream has started arrives as `{"error": {...}}`.

`stop_at_eos` is on by default here as on /v1: the text is the same either way (a committed
token never changes), and decoding ends once everything before the first EOS is decided, as an
LLM server's user expects; `"stop_at_eos": false` decodes the whole canvas (the NFE a paper's
generate function reports).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from unmaskd.engine.loop import Engine, StepEvent
from unmaskd.engine.sequence import (
    GenerationRequest,
    InvalidRequest,
    SequenceResult,
    ValidatedRequest,
)
from unmaskd.sampler_plugins import get_sampler
from unmaskd.server.ab import Experiment, Experiments, Record
from unmaskd.server.metrics import Metrics
from unmaskd.server.protocol import (
    ApiError,
    ChatMessage,
    DecodingOptions,
    GenerateRequest,
    GenerateResponse,
    Timing,
    error_responses,
    lone_surrogate,
    sse_response,
)
from unmaskd.server.scheduler import (
    Cancelled,
    Failed,
    Finished,
    Job,
    NotAccepting,
    QueueFull,
    Scheduler,
)

log = logging.getLogger(__name__)
PolicyLister = Callable[[], list[dict[str, Any]]]
# (text, reference) -> correct?: the served model's task's checker (server/app.py picks it)
ReferenceCheck = Callable[[str, int], bool]
# A draining replica's 503s: the readiness probe (deploy/k8s: 2 failures 5 s apart) takes it
# out of the Service within 10 s, so a retry then reaches another replica.
DRAIN_RETRY_AFTER = {"Retry-After": "10"}
# The first decode's prompt (any text the tokenizer turns into tokens will do).
FIRST_DECODE_PROMPT = "Question: 1 + 1?\nAnswer:"


class CannotDecode(Exception):
    """The loaded model failed its first decode; the message is one line."""


def no_policies() -> list[dict[str, Any]]:
    """The policy lister until learned policies are wired in: none loaded."""
    return []


@dataclass
class Prepared:
    """A request ready for the engine thread."""

    id: str
    vr: ValidatedRequest
    prompt_tokens: int
    experiment: Experiment | None
    arm: str | None
    reference: int | None
    warnings: list[str]  # what the client should know about how this request decodes

    @property
    def sampler(self) -> str:
        return self.vr.request.sampler


@dataclass
class Completed:
    prepared: Prepared
    result: SequenceResult
    timing: Timing
    correct: bool | None


class GenerationService:
    def __init__(self, engine: Engine, scheduler: Scheduler, metrics: Metrics,
                 experiments: Experiments, model_name: str, policies: PolicyLister,
                 check_reference: ReferenceCheck):
        self.engine = engine
        self.check_reference = check_reference
        self.scheduler = scheduler
        self.metrics = metrics
        self.experiments = experiments
        self.model_name = model_name
        self.policies = policies
        self.shutting_down = False
        self.started = int(time.time())

    def first_decode(self) -> SequenceResult:
        """One real decode of what a request naming nothing gets (the default sampler, canvas
        and blocks), straight on the engine, before the engine thread starts: a model that
        loads but cannot decode (a config value out of range, a broken policy) is found here
        rather than by every client. Raises CannotDecode."""
        try:
            prompt_ids = self.engine.tokenizer(FIRST_DECODE_PROMPT)["input_ids"]
            req = GenerationRequest(prompt_ids or [self.engine.eos_id], self.default_sampler(),
                                    stop_at_eos=True)
            (result,) = self.engine.generate([req])
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CannotDecode(f"{type(e).__name__}: {first}" if first
                               else type(e).__name__) from e
        finally:
            self.engine.abort_all()  # a failed step leaves its row behind
        return result

    def default_sampler(self) -> str:
        """"learned" once a learned policy is loaded, else "threshold", else the LLaDA rule."""
        if get_sampler("learned") is not None and self.policies():
            return "learned"
        if get_sampler("threshold") is not None:
            return "threshold"
        return "topk_confidence"

    # ---- prompts ----------------------------------------------------------------------------
    async def encode_text(self, text: str, field: str) -> list[int]:
        """Tokenize in a worker thread: a 1 MiB prompt takes seconds, and the fast tokenizer
        releases the GIL, so the event loop keeps serving other requests meanwhile."""
        check_unicode(text, field)
        try:
            return await asyncio.to_thread(lambda: self.engine.tokenizer(text)["input_ids"])
        except Exception as e:  # a tokenizer failure is the input's fault, never a 500
            raise ApiError(422, field, f"cannot be tokenized: {e}") from None

    async def encode_messages(self, messages: list[ChatMessage], field: str) -> list[int]:
        for i, m in enumerate(messages):
            check_unicode(m.text(), f"{field}.{i}.content")
        try:
            text = self.engine.tokenizer.apply_chat_template(
                [{"role": m.role, "content": m.text()} for m in messages], tokenize=False,
                add_generation_prompt=True)
        except Exception as e:  # the template may raise on what it cannot render
            raise ApiError(422, field, f"cannot be rendered by the chat template: {e}") from None
        if not text:  # the embedded model's template renders only a final user message
            raise ApiError(422, field, "this model's chat template renders them as an empty "
                           "prompt: end them with a user message")
        return await self.encode_text(text, field)

    # ---- requests ---------------------------------------------------------------------------
    def prepare(self, prompt_ids: list[int], opts: DecodingOptions, *, gen_length: int | None,
                temperature: float, stop_at_eos: bool, watch: bool, id_prefix: str,
                fields: dict[str, str]) -> Prepared:
        """Resolve the A/B arm and validate. `fields` renames the engine's field names (e.g.
        gen_length) to the names the client used (max_new_tokens, max_tokens)."""
        sampler, params = opts.sampler or self.default_sampler(), opts.sampler_params
        experiment = arm = None
        if opts.ab is not None:
            if opts.ab not in self.experiments.by_name:
                raise ApiError(422, "ab", f"no A/B experiment {opts.ab!r}; defined: "
                               f"{sorted(self.experiments.by_name)}")
            experiment = self.experiments.by_name[opts.ab]
            arm, spec = experiment.assign(opts.user, self.experiments.rng)
            sampler, params = spec.sampler, spec.sampler_params
        req = GenerationRequest(
            prompt_ids=prompt_ids, sampler=sampler, sampler_params=params,
            gen_length=gen_length, block_length=opts.block_length, steps=opts.steps,
            steps_per_block=opts.steps_per_block,
            temperature=temperature, seed=opts.seed, stop_at_eos=stop_at_eos, watch=watch)
        try:
            vr = self.engine.validate(req)  # pure: safe from the event loop
        except InvalidRequest as e:
            raise ApiError(422, self._field(e.field, fields, arm), e.message) from None
        except Exception as e:  # a sampler's params validator failing in an unexpected way
            log.exception("validation raised")
            raise ApiError(422, self._field("sampler_params", fields, arm),
                           f"rejected: {type(e).__name__}: {e}") from None
        warnings = [f"{self._field('sampler_params', fields, arm)}.{w}"
                    for w in vr.sampler_cls.warnings(vr.params, vr.gen_length, vr.block_length)]
        return Prepared(f"{id_prefix}-{uuid.uuid4().hex}", vr, len(prompt_ids), experiment,
                        arm, opts.reference, warnings)

    @staticmethod
    def _field(name: str, fields: dict[str, str], arm: str | None) -> str:
        if arm is not None and name.startswith("sampler"):
            return f"ab.arms.{arm}.{name}"
        head, dot, rest = name.partition(".")
        return fields.get(head, head) + dot + rest

    def submit(self, prepared: Prepared) -> Job:
        if self.shutting_down:
            self.metrics.request_ended_early(prepared.sampler, prepared.arm, "rejected")
            raise ApiError(503, None, "the server is shutting down",
                           headers=DRAIN_RETRY_AFTER)
        try:
            return self.scheduler.submit(prepared.vr, prepared.sampler, prepared.arm,
                                         prepared.prompt_tokens)
        except QueueFull:
            self.metrics.request_ended_early(prepared.sampler, prepared.arm, "rejected")
            raise ApiError(429, None, f"the batch is full and so is the queue "
                           f"({self.scheduler.max_queue} waiting)", headers={"Retry-After": "1"}
                           ) from None
        except NotAccepting:
            self.metrics.request_ended_early(prepared.sampler, prepared.arm, "rejected")
            raise ApiError(503, None, "the engine is not accepting requests") from None

    async def wait(self, job: Job, request: Request) -> Finished:
        """The job's outcome; cancels it if the client disconnects first."""
        get = asyncio.ensure_future(job.queue.get())
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                raise ApiError(499, None, "client closed the request")
            return _outcome(get.result())
        finally:
            get.cancel()
            gone.cancel()
            self.scheduler.cancel(job)

    async def events(self, job: Job) -> AsyncIterator[StepEvent | Finished]:
        """Step events, then the outcome (raising ApiError for a cancelled or failed job)."""
        while True:
            item = await job.queue.get()
            if isinstance(item, StepEvent):
                yield item
            else:
                yield _outcome(item)
                return

    def complete(self, prepared: Prepared, finished: Finished) -> Completed:
        """Score against the reference answer and record the request in its experiment."""
        res = finished.result
        correct = (None if prepared.reference is None
                   else self.check_reference(res.text, prepared.reference))
        if prepared.experiment is not None and prepared.arm is not None:
            prepared.experiment.record(prepared.id, Record(
                prepared.arm, finished.total_s, res.nfe, res.tokens_per_step,
                None if correct is None else float(correct)))
        return Completed(prepared, res, Timing(queue_s=finished.queue_s,
                                               total_s=finished.total_s), correct)

    def render_canvas(self, canvas: list[int]) -> str:
        return self.engine.render_canvas(canvas)

    async def drain(self, timeout: float) -> None:
        """Stop taking requests (503); let queued and decoding ones finish for up to `timeout`
        seconds, then cancel the rest (their clients get a 503 too)."""
        self.shutting_down = True
        self.scheduler.stop_accepting()
        if not await self._wait_idle(timeout):
            log.warning("shutdown timeout reached: cancelling unfinished requests")
            self.scheduler.cancel_all("shutdown")
            await self._wait_idle(10.0)

    async def _wait_idle(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.scheduler.idle():
            if loop.time() >= deadline or not self.scheduler.alive:
                return False
            await asyncio.sleep(0.02)
        return True


def check_unicode(text: str, field: str) -> None:
    if (problem := lone_surrogate(text)) is not None:
        raise ApiError(422, field, problem)


def _outcome(item: Finished | Cancelled | Failed) -> Finished:
    if isinstance(item, Finished):
        return item
    if isinstance(item, Cancelled) and item.reason == "shutdown":
        raise ApiError(503, None, "cancelled: the server shut down before the request finished",
                       headers=DRAIN_RETRY_AFTER)
    if isinstance(item, Cancelled):
        raise ApiError(499, None, "cancelled")
    raise ApiError(500, None, item.message)


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so the next ASGI message is
    the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def sse(data: Any) -> str:
    """One server-sent event of UTF-8 JSON (the masks read "░", not "\\u2591"). A lone
    surrogate (a plugin echoing a client's string) has no UTF-8 form: such an event is sent
    as escaped JSON, which carries it, rather than breaking the stream."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    try:
        text.encode()
    except UnicodeEncodeError:
        text = json.dumps(data, allow_nan=False)
    return f"data: {text}\n\n"


SSE_DONE = "data: [DONE]\n\n"


class JobStream(StreamingResponse):
    """An SSE response tied to a job: however the response ends (finished, client gone before
    or during the stream, server stopping), the job is cancelled if it is still running."""

    def __init__(self, content: AsyncIterator[str], job: Job, scheduler: Scheduler):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.job = job
        self.scheduler = scheduler

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.scheduler.cancel(self.job)  # a no-op once the job has finished


# ---- POST /generate ------------------------------------------------------------------------------
router = APIRouter(tags=["generate"])


def _response(c: Completed, return_trace: bool) -> GenerateResponse:
    p, res = c.prepared, c.result
    return GenerateResponse(
        id=p.id, text=res.text, token_ids=res.token_ids, finish_reason=res.finish_reason,
        sampler=p.sampler, sampler_params=p.vr.params.model_dump(mode="json"), arm=p.arm,
        nfe=res.nfe, tokens_per_step=res.tokens_per_step, correct=c.correct,
        warnings=p.warnings,
        trace=res.trace if return_trace else None,
        step_counts=res.step_counts if return_trace else None, timing=c.timing)


@router.post("/generate", response_model=GenerateResponse, responses={
    **sse_response("The result; with \"stream\": true, server-sent events: one per step, "
                   "then the result, then [DONE]"),
    **error_responses(400, 401, 413, 422, 429, 500, 503)})
async def generate(body: GenerateRequest, request: Request):
    service: GenerationService = request.app.state.service
    if (body.prompt is None) == (body.messages is None):
        raise ApiError(422, "prompt", "give exactly one of prompt or messages")
    if body.prompt is not None:
        field, prompt_ids = "prompt", await service.encode_text(body.prompt, "prompt")
    else:
        field, prompt_ids = "messages", await service.encode_messages(body.messages, "messages")
    prepared = service.prepare(
        prompt_ids, body, gen_length=body.max_new_tokens, temperature=body.temperature,
        stop_at_eos=body.stop_at_eos, watch=body.stream, id_prefix="gen",
        fields={"prompt": field, "gen_length": "max_new_tokens"})
    job = service.submit(prepared)
    if not body.stream:
        finished = await service.wait(job, request)
        return _response(service.complete(prepared, finished), body.return_trace)

    async def stream() -> AsyncIterator[str]:
        try:
            async for item in service.events(job):
                if isinstance(item, StepEvent):
                    yield sse({"step": item.nfe, "committed": item.committed,
                               "canvas": service.render_canvas(item.canvas)})
                else:
                    completed = service.complete(prepared, item)
                    yield sse(_response(completed, body.return_trace).model_dump(mode="json"))
        except ApiError as e:
            yield sse({"error": {"message": e.message, "status": e.status}})
        yield SSE_DONE

    return JobStream(stream(), job, service.scheduler)

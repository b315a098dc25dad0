"""The HTTP server: `create_app(settings, engine)` and `serve_main(argv)` (`unmaskd serve`).

    unmaskd serve --port 8000 --max-batch-size 32 --api-key secret --ab-config ab.yaml

One process, one engine, one engine thread (server.scheduler) doing continuous batching; the
endpoints live in serving_generate (/generate), serving_openai (/v1) and ab (/ab). Here: errors,
authentication, /health, /metrics, /samplers, the /playground page (two samplers side by side,
streamed; server/playground.html), and the shutdown sequence. On SIGTERM (or Ctrl+C)
the server stops accepting work (503 on /health and new requests) but keeps listening while
in-flight requests finish, at most --shutdown-timeout seconds, after which the rest are
cancelled (503); then it exits with status 0. A second signal exits at once.

Client errors never become 500s. A body that cannot be read as JSON (empty, not JSON, not UTF-8,
nested too deep, an integer too long to convert, or not sent as JSON) is a 400 on `body`, as
OpenAI answers; JSON that fails validation is a 422 naming the field (400 on /v1 for unknown or
dLLM-meaningless fields, as OpenAI answers), and every refusal from the generation path is an
ApiError rendered the same way.

The server is ready only once it can decode: `serve_main` runs one real decode on the loaded
model (what a request naming nothing gets) before uvicorn listens, so /health answers 200 only
after it; if that decode fails the process exits with status 2 and one `error:` line.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send
from unmaskd.engine.loop import Engine
from unmaskd.sampler_plugins import Sampler, registered_samplers
from unmaskd.sampler_plugins.policy_store import STORE
from unmaskd.server import ab, serving_generate, serving_openai
from unmaskd.server.ab import ABConfig, Experiments, load_ab_config
from unmaskd.server.metrics import CONTENT_TYPE, Metrics
from unmaskd.server.protocol import (
    ApiError,
    Health,
    error_responses,
    lone_surrogate,
    openai_error,
    prompt_schema,
)
from unmaskd.server.scheduler import Scheduler
from unmaskd.server.serving_generate import (
    CannotDecode,
    GenerationService,
    PolicyLister,
    ReferenceCheck,
    no_policies,
)
from unmaskd.server.settings import ServerSettings, parse_settings
from unmaskd.tasks import UnknownTask, get_task

log = logging.getLogger("unmaskd.server")
GENERATION_PATHS = ("/generate", "/v1/completions", "/v1/chat/completions")
# No API key needed: probes, scrapers, and the playground page (its own calls send the key).
OPEN_PATHS = ("/health", "/metrics", "/playground")
PLAYGROUND_PAGE = Path(__file__).with_name("playground.html")


class SafeJSONResponse(JSONResponse):
    """ASCII-escaped JSON: strings a client sent (lone surrogates included) always encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False,
                          separators=(",", ":")).encode()


def error_response(path: str, status: int, field: str | None, message: str,
                   headers: dict[str, str] | None = None, code: str | None = None,
                   **extra: Any) -> Response:
    text = f"{field}: {message}" if field else message
    body = (openai_error(status, field, text, code) if path.startswith("/v1/")
            else {"detail": text, "field": field})
    return SafeJSONResponse({**body, **extra}, status_code=status, headers=headers)


class ApiKeyMiddleware:
    """Bearer-token check before anything else runs (so an unauthenticated client learns
    nothing from validation errors). Plain ASGI: streaming and disconnects pass untouched."""

    def __init__(self, app: ASGIApp, key: str):
        self.app = app
        self.key = key.encode("utf-8", "surrogateescape")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            auth = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                response = error_response(scope["path"], 401, None, "missing or invalid API "
                                          "key (send 'Authorization: Bearer KEY')",
                                          headers={"WWW-Authenticate": "Bearer"},
                                          code="invalid_api_key")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for a request body over `limit` bytes, before anything parses it: by Content-Length
    when the client sends one, else by counting a chunked body as it arrives (then replayed)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) <= self.limit:
                await self.app(scope, receive, send)
            else:
                await self._refuse(scope, receive, send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await self._refuse(scope, receive, send)
                return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(scope["path"], 413, "body", f"larger than the server's "
                                  f"limit of {self.limit} bytes (--max-body-bytes)")
        await response(scope, receive, send)


def _count_refusal(request: Request, status: int) -> None:
    if request.url.path in GENERATION_PATHS and status in (400, 404, 422):
        request.app.state.service.metrics.request_ended_early("", None, "invalid")


async def _api_error(request: Request, exc: ApiError) -> Response:
    _count_refusal(request, exc.status)
    return error_response(request.url.path, exc.status, exc.field, exc.message, exc.headers,
                          exc.code)


UNREADABLE = "not valid JSON"


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Starlette's own refusals in the API's error shape: a body it cannot parse (bad UTF-8,
    nested too deep, an integer too long to convert) is a 400 on the body; unknown routes and
    methods keep their status."""
    field = "body" if exc.status_code == 400 else None
    detail = (f"{UNREADABLE}: not UTF-8, nested too deep, or a number too long to convert"
              if exc.status_code == 400 else str(exc.detail))
    headers = exc.headers
    if exc.status_code == 405:  # Starlette's Allow names the first route's methods only
        allowed = {m for route in request.app.routes
                   if route.matches(request.scope)[0] == Match.PARTIAL
                   for m in getattr(route, "methods", None) or ()}
        headers = {**(headers or {}), "Allow": ", ".join(sorted(allowed))}
    _count_refusal(request, exc.status_code)
    return error_response(request.url.path, exc.status_code, field, detail, headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    """The first problem, named by its top-level field; all of them under "errors". A body
    that could not be read as JSON at all is a 400, as in _http_error."""
    problems = []
    unreadable = False
    is_json = "json" in request.headers.get("content-type", "")
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        loc = loc[1:] if loc and loc[0] in ("body", "path", "query") else loc
        kind = err.get("type")
        unknown = kind == "extra_forbidden"
        message = "unrecognized request argument" if unknown else str(err.get("msg"))
        message = message.removeprefix("Value error, ")  # our validators' own words
        if kind == "string_unicode" and isinstance(err.get("input"), str):
            # A length-checked string (prompt, an arm name) with a lone surrogate; unchecked
            # ones reach serving_generate.check_unicode, which says the same.
            message = lone_surrogate(err["input"]) or message
        if kind == "json_invalid":  # loc holds the character offset
            message, loc = f"{UNREADABLE} (at character {loc[0] if loc else 0})", []
            unreadable = True
        elif not loc and not is_json:
            message = "send a JSON object with 'Content-Type: application/json'"
            unreadable = True
        elif not loc and kind == "missing":
            message = "empty: send a JSON object"
            unreadable = True
        elif loc and loc[-1] == "[key]":  # a key of an object (an arm name), not a value under it
            *loc, key, _ = loc
            message = f"name {key!r}: {message}"
        problems.append((loc[0] if loc else "body", ".".join(loc) or "body", message, unknown))
    field, path, message, unknown = problems[0]
    status = 400 if unreadable or (unknown and request.url.path.startswith("/v1/")) else 422
    _count_refusal(request, status)
    return error_response(request.url.path, status, field,
                          message if path == field else f"{path}: {message}",
                          errors=[{"field": p, "message": m} for _, p, m, _ in problems])


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return error_response(request.url.path, 500, None, f"internal error: {type(exc).__name__}")


def describe_sampler(name: str, cls: type[Sampler]) -> dict[str, Any]:
    """A sampler for GET /samplers: its doc, params schema and defaults."""
    doc = cls.__doc__ or getattr(sys.modules.get(cls.__module__), "__doc__", None) or ""
    fields = cls.Params.model_fields
    defaults = {k: f.get_default(call_default_factory=True) for k, f in fields.items()
                if not f.is_required()}
    return {"name": name, "description": doc.strip().split("\n\n")[0],
            "params_schema": cls.Params.model_json_schema(),
            "defaults": jsonable_encoder(defaults),
            "required": [k for k, f in fields.items() if f.is_required()],
            "needs_probs": cls.needs_probs, "full_canvas": cls.full_canvas}


def _routes() -> APIRouter:
    router = APIRouter()

    @router.get("/health", tags=["ops"], responses={
        200: {"model": Health, "description": "Serving"},
        503: {"model": Health, "description": "Shutting down, or the engine loop has stopped"}})
    async def health(request: Request) -> Response:
        service: GenerationService = request.app.state.service
        if service.shutting_down:
            return SafeJSONResponse({"status": "shutting down"}, status_code=503)
        if not service.scheduler.alive:
            return SafeJSONResponse({"status": "engine loop not running"}, status_code=503)
        return SafeJSONResponse({"status": "ok", "cache": service.engine.cache})

    @router.get("/metrics", tags=["ops"], response_class=PlainTextResponse, responses={
        200: {"description": "Prometheus text format"}})
    async def metrics(request: Request) -> Response:
        return Response(request.app.state.service.metrics.render(), media_type=CONTENT_TYPE)

    @router.get("/playground", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(PLAYGROUND_PAGE.read_text())

    @router.get("/samplers", tags=["generate"], responses=error_responses(401))
    async def samplers(request: Request) -> dict[str, Any]:
        service: GenerationService = request.app.state.service
        return {"default": service.default_sampler(),
                "samplers": [describe_sampler(n, c)
                             for n, c in sorted(registered_samplers().items())],
                "policies": service.policies(),
                # what a request that names no canvas gets (the playground's form defaults)
                "canvas": dict(zip(("gen_length", "block_length"),
                                   service.engine.default_canvas())),
                "skipped_policies": dict(STORE.skipped)}  # name -> why it was not loaded

    return router


def reference_check(model_dir: Path) -> ReferenceCheck:
    """What a request's `reference` is scored with: the checker of the task the model folder's
    unmaskd_task.json names; a folder without one is an arithmetic model (the embedded one).
    Raises CheckpointError for a malformed file, UnknownTask for a task no suite has."""
    from unmaskd.dllm.checkpoint import TASK_FILE, read_task_file

    task = read_task_file(model_dir).get("task", "arithmetic")
    return get_task(task, Path(model_dir) / TASK_FILE).check_answer


def create_app(settings: ServerSettings, engine: Engine, ab_config: ABConfig | None = None,
               policies: PolicyLister = no_policies) -> FastAPI:
    """The app around an already-loaded engine. `policies` lists loaded learned policies
    (dicts of metadata) for GET /samplers and the default-sampler choice. Raises UnknownTask
    if the model folder names a task no suite has (see `reference_check`)."""
    model_name = Path(settings.model).resolve().name
    check_reference = reference_check(settings.model)
    metrics = Metrics(model_name)
    metrics.engine.labels(model_name).info({"cache": engine.cache,
                                            "model_type": engine.cfg.model_type})
    scheduler = Scheduler(engine, metrics, settings.max_batch_size, settings.max_queue)
    experiments = Experiments(ab_config or ABConfig(), settings.ab_min_samples)
    service = GenerationService(engine, scheduler, metrics, experiments, model_name, policies,
                                check_reference)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        yield
        await asyncio.to_thread(scheduler.stop)

    app = FastAPI(title="unmaskd", lifespan=lifespan, default_response_class=SafeJSONResponse)
    app.state.settings = settings
    app.state.service = service
    app.state.experiments = experiments
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)
    app.include_router(_routes())
    app.include_router(serving_generate.router)
    app.include_router(serving_openai.router)
    app.include_router(ab.router)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    if settings.api_key is not None:  # added last: runs first
        app.add_middleware(ApiKeyMiddleware, key=settings.api_key)

    def openapi() -> dict[str, Any]:
        """FastAPI's document with what only the running server knows, so that a body it
        allows is not refused for it: the one model /v1 serves (others are a 404), the
        registered samplers, the model's vocabulary for token-id prompts."""
        if app.openapi_schema is None:
            schemas = FastAPI.openapi(app)["components"]["schemas"]
            samplers = sorted(registered_samplers())
            for body in ("CompletionRequest", "ChatCompletionRequest"):
                schemas[body]["properties"]["model"]["enum"] = [model_name]
            for body in ("GenerateRequest", "CompletionRequest", "ChatCompletionRequest"):
                schemas[body]["properties"]["sampler"]["anyOf"][0]["enum"] = samplers
            schemas["ArmSpec"]["properties"]["sampler"]["enum"] = samplers
            schemas["CompletionRequest"]["properties"]["prompt"].update(
                prompt_schema(engine.cfg.vocab_size))
            (model_id,) = app.openapi_schema["paths"]["/v1/models/{model_id}"]["get"][
                "parameters"]
            model_id["schema"]["enum"] = [model_name]
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


class DrainingServer(uvicorn.Server):
    """uvicorn whose first SIGTERM/SIGINT drains instead of closing the listening socket, so
    clients get a 503 rather than a refused connection while in-flight requests finish."""

    def __init__(self, config: uvicorn.Config, service: GenerationService, timeout: float):
        super().__init__(config)
        self.service = service
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._drain_task: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        if self._loop is None or self._draining:  # not started yet, or a second signal
            self.force_exit = self._draining
            self.should_exit = True
            return
        self._draining = True
        log.info("signal %d: draining (at most %.0f s)", sig, self.timeout)
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        await self.service.drain(self.timeout)
        self.should_exit = True


def serve_main(argv: list[str]) -> int:
    try:
        settings = parse_settings(argv)
    except ValidationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    try:
        ab_config = load_ab_config(settings.ab_config) if settings.ab_config else ABConfig()
    except ValueError as e:
        print(f"error: --ab-config: {e}", file=sys.stderr)
        return 2
    from unmaskd.engine.model_args import build_engine
    from unmaskd.sampler_plugins.policy_store import STORE

    try:
        engine = build_engine(settings.model, settings.device, settings.dtype,
                              settings.mask_token_id, settings.cache,
                              settings.policies or settings.model / "policies",
                              settings.default_gen_length, settings.threads)
    except (OSError, ValueError) as e:  # CheckpointError and ConfigError are ValueErrors
        print(f"error: cannot load the model from {settings.model}: {e}", file=sys.stderr)
        return 2
    log.info("cache %s; learned policies loaded: %s", settings.cache,
             sorted(STORE.policies) or "none")
    try:
        app = create_app(settings, engine, ab_config, policies=STORE.describe)
    except UnknownTask as e:
        print(f"error: cannot serve the model from {settings.model}: {e}", file=sys.stderr)
        return 2
    service: GenerationService = app.state.service
    try:  # before uvicorn listens: /health answers only once the model has decoded
        first = service.first_decode()
    except CannotDecode as e:
        print(f"error: the model from {settings.model} loaded but cannot decode: {e}",
              file=sys.stderr)
        return 2
    log.info("first decode (%s): %d NFE; ready", service.default_sampler(), first.nfe)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info",
                            timeout_graceful_shutdown=5)
    DrainingServer(config, app.state.service, settings.shutdown_timeout).run()
    return 0

"""Prometheus metrics, one CollectorRegistry per app (so in-process test apps never share counts).

Token and step counters count completed requests only (finish reason "stop" or "length"), so
that `rate(unmaskd_generated_tokens_total) / rate(unmaskd_denoise_steps_total)` is exactly the
mean tokens/step clients saw: every completed request decides its whole canvas (gen_length
tokens) in `nfe` steps. Cancelled and failed requests show up in `unmaskd_requests_total` only.
All methods are thread-safe (the engine thread and the event loop both report).

The registry also carries prometheus_client's standard process_* (resident and virtual memory,
CPU seconds, open and maximum file descriptors, start time; Linux), python_info and python_gc_*
series, as the library's default registry would.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

_REQUEST = ["model", "sampler", "arm"]
_LATENCY_BUCKETS = (.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120)
_STEP_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1)
_TPS_BUCKETS = (1, 1.25, 1.5, 2, 2.5, 3, 4, 6, 8, 12, 16, 32, 64)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
COMPLETED = ("stop", "length")
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, model: str):
        self.model = model
        r = self.registry = CollectorRegistry()
        # The standard series every Prometheus user looks for (the collectors read the process
        # when scraped, so one instance serves every registry).
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.requests = Counter(
            "unmaskd_requests", "Requests by outcome: the finish reason (stop, length), "
            "cancelled, error, rejected (queue full or shutting down) or invalid (422)",
            [*_REQUEST, "status"], registry=r)
        self.generated_tokens = Counter(
            "unmaskd_generated_tokens", "Canvas tokens decided (gen_length per completed request)",
            _REQUEST, registry=r)
        self.denoise_steps = Counter(
            "unmaskd_denoise_steps", "Denoising steps (NFE) of completed requests", _REQUEST,
            registry=r)
        self.prompt_tokens = Counter(
            "unmaskd_prompt_tokens", "Prompt tokens of completed requests", _REQUEST, registry=r)
        self.tokens_per_step = Histogram(
            "unmaskd_tokens_per_step", "Per completed request: gen_length / nfe", _REQUEST,
            buckets=_TPS_BUCKETS, registry=r)
        self.latency = Histogram(
            "unmaskd_request_latency_seconds", "Submission to result, completed requests",
            _REQUEST, buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram(
            "unmaskd_queue_time_seconds", "Submission to joining the batch, completed requests",
            _REQUEST, buckets=_LATENCY_BUCKETS, registry=r)
        self.step_duration = Histogram(
            "unmaskd_step_duration_seconds", "Wall time of one batched denoising step",
            ["model"], buckets=_STEP_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "unmaskd_batch_size", "Requests in the batch at each step", ["model"],
            buckets=_BATCH_BUCKETS, registry=r)
        self.sampler_overhead = Histogram(
            "unmaskd_sampler_overhead_seconds", "Time the samplers' select() took in one step",
            ["model"], buckets=_STEP_BUCKETS, registry=r)
        self.running = Gauge("unmaskd_requests_running", "Requests in the decoding batch",
                             ["model"], registry=r)
        self.waiting = Gauge("unmaskd_requests_waiting", "Requests queued for a batch slot",
                             ["model"], registry=r)
        self.kv_cache_bytes = Gauge(
            "unmaskd_kv_cache_bytes", "Memory held by the decoding batch's key/value cache",
            ["model"], registry=r)
        self.engine = Info("unmaskd_engine", "How the engine decodes (server-wide settings)",
                           ["model"], registry=r)

    def request_finished(self, sampler: str, arm: str | None, status: str, *, gen_length: int,
                         nfe: int, prompt_tokens: int, queue_s: float, total_s: float) -> None:
        """A request that reached the engine ended (completed, or cancelled mid-decode)."""
        labels = (self.model, sampler, arm or "")
        self.requests.labels(*labels, status).inc()
        if status not in COMPLETED:
            return
        self.generated_tokens.labels(*labels).inc(gen_length)
        self.denoise_steps.labels(*labels).inc(nfe)
        self.prompt_tokens.labels(*labels).inc(prompt_tokens)
        self.tokens_per_step.labels(*labels).observe(gen_length / max(1, nfe))
        self.latency.labels(*labels).observe(total_s)
        self.queue_time.labels(*labels).observe(queue_s)

    def request_ended_early(self, sampler: str, arm: str | None, status: str) -> None:
        """A request that never completed decoding: rejected, invalid, cancelled while queued,
        or failed."""
        self.requests.labels(self.model, sampler, arm or "", status).inc()

    def step(self, duration_s: float, batch_size: int, sampler_s: float,
             cache_bytes: int) -> None:
        self.step_duration.labels(self.model).observe(duration_s)
        self.kv_cache_bytes.labels(self.model).set(cache_bytes)
        self.batch_size.labels(self.model).observe(batch_size)
        self.sampler_overhead.labels(self.model).observe(sampler_s)

    def load(self, running: int, waiting: int) -> None:
        self.running.labels(self.model).set(running)
        self.waiting.labels(self.model).set(waiting)

    def render(self) -> bytes:
        return generate_latest(self.registry)

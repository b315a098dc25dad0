"""A/B experiments between samplers: definitions, arm assignment, per-request records, and the
report with confidence intervals and tests of difference.

An experiment is a set of arms, each a sampler with params and a weight. A request naming the
experiment (`"ab": "name"`) gets an arm from a stable hash of its `user` (the same user always
lands in the same arm while the definition stands), or at random without one; the arm's sampler
and params replace the request's. Completed requests are recorded with latency, NFE and
tokens/step, and a score in [0, 1] when the request carried a `reference` answer or feedback
was posted later (feedback overrides).

Statistics are small pure functions: t-based 95% intervals for means, Wilson intervals for
accuracy (engine/stats.py, shared with `unmaskd eval`), Welch's t-test for latency and NFE, a
two-proportion z-test for accuracy (scores from feedback may be fractional; their sum stands in
for the success count). Every pair of arms is compared, without correction for multiple
comparisons. Below `min_samples` requests per arm (or scored requests, for accuracy) a comparison
reports "not enough data yet" instead of numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import yaml
from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from scipy import stats
from unmaskd.engine.sequence import InvalidRequest, parse_sampler_params
from unmaskd.engine.stats import wilson_interval
from unmaskd.server.protocol import ApiError, check_finite, error_responses

NOT_ENOUGH = "not enough data yet"
MAX_RECORDS = 100_000  # per experiment; the oldest records are dropped beyond this
# Arms are compared pairwise and experiment and arm names become metric labels: keep both small.
MAX_ARMS = 16
MAX_EXPERIMENTS = 64
MAX_NAME_LENGTH = 64


# ---- statistics ----------------------------------------------------------------------------------
def mean_ci(values: Sequence[float], confidence: float = 0.95
            ) -> tuple[float, float | None, float | None]:
    """Mean and its Student-t confidence interval (no interval from fewer than 2 values)."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, None, None
    half = stats.t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return mean, float(mean - half), float(mean + half)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between order statistics."""
    return float(np.percentile(np.asarray(values, dtype=float), q))


def welch_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float | None]:
    """Welch's unequal-variance t-test of mean(b) - mean(a). Two constant samples have no
    variance to test against: statistic and p-value are then None."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    out: dict[str, float | None] = {"diff": float(xb.mean() - xa.mean()), "statistic": None,
                                    "p_value": None}
    if np.ptp(xa) > 0 or np.ptp(xb) > 0:
        res = stats.ttest_ind(xb, xa, equal_var=False)
        out["statistic"], out["p_value"] = _finite(res.statistic), _finite(res.pvalue)
    return out


def two_proportion_z_test(s_a: float, n_a: int, s_b: float, n_b: int) -> dict[str, float]:
    """Pooled two-proportion z-test of p_b - p_a, two-sided. Identical all-0 or all-1 samples
    have no variance and are reported as no difference (z = 0, p = 1)."""
    p_a, p_b = s_a / n_a, s_b / n_b
    pooled = (s_a + s_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    z = (p_b - p_a) / se if se > 0 else 0.0
    return {"diff": p_b - p_a, "statistic": z, "p_value": float(2 * stats.norm.sf(abs(z)))}


def assign_arm(experiment: str, arms: Sequence[tuple[str, float]], user: str | None,
               rng: random.Random) -> str:
    """Weighted arm choice: a point in [0, 1) from blake2b(experiment, user), or from rng when
    there is no user, walked along the cumulative weights."""
    if user is None:
        u = rng.random()
    else:
        key = f"{experiment}\x00{user}".encode("utf-8", "surrogatepass")
        u = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2.0**64
    total = sum(w for _, w in arms)
    edge = 0.0
    for name, weight in arms:
        edge += weight / total
        if u < edge:
            return name
    return arms[-1][0]  # u within rounding of 1.0


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


# ---- definitions ---------------------------------------------------------------------------------
class ArmSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    sampler: str
    sampler_params: dict[str, Any] = Field(default_factory=dict)
    weight: float = Field(1.0, gt=0, allow_inf_nan=False)

    _finite_params = field_validator("sampler_params")(check_finite)


Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH)]


class ExperimentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    arms: dict[Name, ArmSpec] = Field(min_length=1, max_length=MAX_ARMS)


class ABConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    experiments: dict[str, ExperimentSpec] = Field(default_factory=dict,
                                                   max_length=MAX_EXPERIMENTS)


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: str
    score: float = Field(ge=0, le=1, allow_inf_nan=False)


def load_ab_config(path: Path) -> ABConfig:
    """Experiments from a YAML or JSON file (by suffix; JSON for .json). Raises ValueError
    with the reason (unreadable file, bad structure, or an arm the registry rejects)."""
    try:
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        config = ABConfig.model_validate(raw or {})
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: {e}") from None
    for name, spec in config.experiments.items():
        try:
            validate_spec(spec)
        except InvalidRequest as e:
            raise ValueError(f"{path}: experiment {name!r}: {e}") from None
    return config


def validate_spec(spec: ExperimentSpec) -> dict[str, dict]:
    """Every arm's sampler and params through the registry; returns the arms' params with
    defaults filled in. Raises InvalidRequest naming `arms.<arm>.<field>`."""
    resolved = {}
    for arm, a in spec.arms.items():
        try:
            _, params = parse_sampler_params(a.sampler, a.sampler_params)
        except InvalidRequest as e:
            raise InvalidRequest(f"arms.{arm}.{e.field}", e.message) from None
        resolved[arm] = params.model_dump(mode="json")
    return resolved


# ---- running experiments -------------------------------------------------------------------------
@dataclass
class Record:
    arm: str
    latency_s: float
    nfe: int
    tokens_per_step: float
    score: float | None


class Experiment:
    """One experiment definition and the records of the requests it assigned. Replacing the
    definition (PUT) makes a new Experiment: data from other arms is not comparable."""

    def __init__(self, name: str, spec: ExperimentSpec, max_records: int = MAX_RECORDS):
        self.params = validate_spec(spec)
        self.name = name
        self.spec = spec
        self.max_records = max_records
        self.records: OrderedDict[str, Record] = OrderedDict()

    def assign(self, user: str | None, rng: random.Random) -> tuple[str, ArmSpec]:
        arm = assign_arm(self.name, [(n, a.weight) for n, a in self.spec.arms.items()], user,
                         rng)
        return arm, self.spec.arms[arm]

    def record(self, request_id: str, record: Record) -> None:
        self.records[request_id] = record
        while len(self.records) > self.max_records:
            self.records.popitem(last=False)

    def feedback(self, request_id: str, score: float) -> None:
        """Raises KeyError for a request this experiment has no record of."""
        self.records[request_id].score = score

    def report(self, min_samples: int) -> dict[str, Any]:
        by_arm: dict[str, list[Record]] = {arm: [] for arm in self.spec.arms}
        for rec in self.records.values():
            by_arm[rec.arm].append(rec)
        arms = {arm: {"sampler": spec.sampler, "sampler_params": self.params[arm],
                      "weight": spec.weight, **_arm_summary(by_arm[arm])}
                for arm, spec in self.spec.arms.items()}
        names = list(self.spec.arms)
        comparisons = [_compare(a, by_arm[a], b, by_arm[b], min_samples)
                       for i, a in enumerate(names) for b in names[i + 1:]]
        ready = all(c["status"] == "ok" for c in comparisons)
        return {"experiment": self.name, "status": "ok" if ready else NOT_ENOUGH,
                "min_samples": min_samples, "arms": arms, "comparisons": comparisons}


def _arm_summary(recs: list[Record]) -> dict[str, Any]:
    summary: dict[str, Any] = {"requests": len(recs), "latency_s": None, "nfe": None,
                               "tokens_per_step": None, "accuracy": None}
    if recs:
        latency = [r.latency_s for r in recs]
        summary["latency_s"] = {**_mean_summary(latency), "p50": percentile(latency, 50),
                                "p95": percentile(latency, 95)}
        summary["nfe"] = _mean_summary([r.nfe for r in recs])
        summary["tokens_per_step"] = _mean_summary([r.tokens_per_step for r in recs])
    scores = [r.score for r in recs if r.score is not None]
    if scores:
        summary["accuracy"] = {"n": len(scores), "mean": sum(scores) / len(scores),
                               "ci95": list(wilson_interval(sum(scores), len(scores)))}
    return summary


def _mean_summary(values: Sequence[float]) -> dict[str, Any]:
    mean, low, high = mean_ci(values)
    ci = None if low is None else [_finite(low), _finite(high)]
    return {"mean": mean, "ci95": ci}


def _compare(a: str, ra: list[Record], b: str, rb: list[Record],
             min_samples: int) -> dict[str, Any]:
    """Arm b against arm a: differences are b - a."""
    out: dict[str, Any] = {"arms": [a, b]}
    if min(len(ra), len(rb)) < min_samples:
        out["status"] = NOT_ENOUGH
        return out
    out["status"] = "ok"
    out["latency_s"] = welch_test([r.latency_s for r in ra], [r.latency_s for r in rb])
    out["nfe"] = welch_test([r.nfe for r in ra], [r.nfe for r in rb])
    sa = [r.score for r in ra if r.score is not None]
    sb = [r.score for r in rb if r.score is not None]
    if min(len(sa), len(sb)) < min_samples:
        out["accuracy"] = {"status": NOT_ENOUGH, "n": [len(sa), len(sb)]}
    else:
        out["accuracy"] = {"status": "ok", "n": [len(sa), len(sb)],
                           **two_proportion_z_test(sum(sa), len(sa), sum(sb), len(sb))}
    return out


class Experiments:
    """The server's experiments by name (touched only from the event loop: no locking)."""

    def __init__(self, config: ABConfig, min_samples: int):
        self.min_samples = min_samples
        self.rng = random.Random()
        self.by_name = {name: Experiment(name, spec)
                        for name, spec in config.experiments.items()}

    def get(self, name: str) -> Experiment:
        try:
            return self.by_name[name]
        except KeyError:
            raise ApiError(404, "name", f"no A/B experiment {name!r}; defined: "
                           f"{sorted(self.by_name)}") from None

    def put(self, name: str, spec: ExperimentSpec) -> Experiment:
        """`name` is 1 to MAX_NAME_LENGTH characters (checked as the path parameter)."""
        if name not in self.by_name and len(self.by_name) >= MAX_EXPERIMENTS:
            raise ApiError(422, "name", f"already {MAX_EXPERIMENTS} experiments, the limit: "
                           "replace one instead")
        try:
            experiment = Experiment(name, spec)
        except InvalidRequest as e:
            raise ApiError(422, e.field, e.message) from None
        self.by_name[name] = experiment
        return experiment


# ---- HTTP ----------------------------------------------------------------------------------------
router = APIRouter(tags=["ab"], responses=error_responses(401))


def _experiments(request: Request) -> Experiments:
    return request.app.state.experiments


@router.get("/ab")
async def list_experiments(request: Request) -> dict[str, Any]:
    exps = _experiments(request)
    return {"experiments": {n: e.spec.model_dump() for n, e in exps.by_name.items()}}


@router.get("/ab/{name}", responses=error_responses(404, 422, why={
    404: "No experiment of that name."}))
async def experiment_report(name: str, request: Request) -> dict[str, Any]:
    exps = _experiments(request)
    return exps.get(name).report(exps.min_samples)


@router.put("/ab/{name}", responses=error_responses(400, 413, 422))
async def put_experiment(name: Annotated[str, PathParam(max_length=MAX_NAME_LENGTH)],
                         spec: ExperimentSpec, request: Request) -> dict[str, Any]:
    """Define or replace an experiment. Replacing starts its records afresh."""
    experiment = _experiments(request).put(name, spec)
    return {"experiment": name, **experiment.spec.model_dump()}


@router.post("/ab/{name}/feedback", responses=error_responses(400, 404, 413, 422, why={
    404: "No experiment of that name, or it has no record of the request."}))
async def post_feedback(name: str, body: Feedback, request: Request) -> dict[str, Any]:
    experiment = _experiments(request).get(name)
    try:
        experiment.feedback(body.request_id, body.score)
    except KeyError:
        raise ApiError(404, "request_id", f"experiment {name!r} has no record of request "
                       f"{body.request_id!r}") from None
    return {"experiment": name, "request_id": body.request_id, "score": body.score}

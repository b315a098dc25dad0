"""What a generation request is, how it is validated, and what it returns.

Validation raises one error type, `InvalidRequest(field, message)`, which the HTTP layer maps to
422 naming the field; the CLI prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError
from unmaskd.sampler_plugins import Sampler, SamplerParams, get_sampler, registered_samplers


class InvalidRequest(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    sampler: str = "topk_confidence"
    sampler_params: dict = field(default_factory=dict)
    gen_length: int | None = None  # None: the engine's default canvas
    block_length: int | None = None  # None: default_block_length (the model's trained block
    # length if it divides L, else L/4 or the largest divisor of L below it; L for Dream)
    steps: int | None = None  # None: one per position (a cap for adaptive samplers); a
    # multiple of the blocks gen_length spans, split evenly over them
    steps_per_block: int | None = None  # instead of steps: each block's budget, 1..block_length
    temperature: float = 0.0
    seed: int = 0
    stop_at_eos: bool = False
    watch: bool = False  # report committed positions every step (streaming, --show-steps)


@dataclass
class SequenceResult:
    request_id: int
    text: str
    token_ids: list[int]  # the whole answer canvas, EOS padding included
    nfe: int
    tokens_per_step: float
    step_counts: list[int]  # tokens committed at each step
    trace: list[int]  # for every canvas position, the step (0-based) that committed it
    wall_s: float
    finish_reason: str  # "stop" (EOS in the canvas), "length" (canvas full), "cancelled"
    gen_length: int = 0
    sampler_state: dict = field(default_factory=dict, repr=False)  # e.g. policy rollout records

    def to_dict(self) -> dict:
        return {
            "text": self.text, "token_ids": self.token_ids, "nfe": self.nfe,
            "tokens_per_step": round(self.tokens_per_step, 4), "step_counts": self.step_counts,
            "trace": self.trace, "wall_s": round(self.wall_s, 4),
            "finish_reason": self.finish_reason,
        }


@dataclass
class ValidatedRequest:
    request: GenerationRequest
    sampler_cls: type[Sampler]
    params: SamplerParams
    gen_length: int
    block_length: int
    steps_per_block: int
    # Block-diffusion models align blocks to absolute position 0: the first block holds the
    # prompt's last `block_offset` tokens, so it has block_length - block_offset canvas positions.
    block_offset: int = 0

    @property
    def n_blocks(self) -> int:
        return (self.block_offset + self.gen_length) // self.block_length

    @property
    def steps(self) -> int:
        """The step budget over the whole canvas (adaptive samplers may use fewer)."""
        return self.steps_per_block * self.n_blocks


def parse_sampler_params(sampler: str, raw: dict) -> tuple[type[Sampler], SamplerParams]:
    cls = get_sampler(sampler)
    if cls is None:
        raise InvalidRequest("sampler", f"unknown sampler {sampler!r}; registered: "
                             f"{sorted(registered_samplers())}")
    try:
        return cls, cls.Params(**raw)
    except ValidationError as e:
        err = e.errors()[0]
        name = ".".join(str(p) for p in err["loc"]) or "sampler_params"
        raise InvalidRequest(f"sampler_params.{name}", err["msg"]) from None


def validate(req: GenerationRequest, default_gen_length: int, max_sequence_length: int,
             vocab_size: int, aligned_block: int | None = None,
             full_block: bool = False, trained_block: int | None = None) -> ValidatedRequest:
    """`aligned_block`: the model is block-diffusion with this default block length; blocks are
    aligned to the prompt's start and the canvas grows until prompt + canvas fill whole blocks.
    `full_block`: the model decodes the whole canvas as one block unless asked (Dream).
    `trained_block`: the block length the model was trained to decode in (its task's record),
    the default wherever it divides the canvas."""
    if not req.prompt_ids:
        raise InvalidRequest("prompt", "must not be empty")
    if any(not 0 <= t < vocab_size for t in req.prompt_ids):
        raise InvalidRequest("prompt", f"token ids must be in [0, {vocab_size})")
    gen_length = req.gen_length if req.gen_length is not None else default_gen_length
    if gen_length < 1:
        raise InvalidRequest("gen_length", "must be >= 1")
    room = max_sequence_length - len(req.prompt_ids)
    if room < 1:
        raise InvalidRequest("prompt", f"is {len(req.prompt_ids)} tokens; the model's limit is "
                             f"{max_sequence_length} tokens for prompt + answer")
    block_offset = 0
    asked_length = gen_length
    if aligned_block is not None:
        block_length = req.block_length if req.block_length is not None else aligned_block
        if block_length < 1:
            raise InvalidRequest("block_length", "must be >= 1")
        block_offset = len(req.prompt_ids) % block_length
        whole = -(-(len(req.prompt_ids) + gen_length) // block_length) * block_length
        gen_length = whole - len(req.prompt_ids)
    if gen_length > room:
        raise InvalidRequest("gen_length", f"{gen_length} does not fit: prompt is "
                             f"{len(req.prompt_ids)} tokens, model limit {max_sequence_length}")
    if aligned_block is None:
        block_length = req.block_length if req.block_length is not None else \
            default_block_length(gen_length, full_block, trained_block)
        if block_length < 1 or gen_length % block_length:
            raise InvalidRequest("block_length", f"{block_length} must divide the canvas length "
                                 f"{gen_length}")
    # `steps` is split over the blocks the asked canvas spans, not over the canvas's blocks: a
    # block-diffusion canvas grows to whole aligned blocks, one more for some prompt lengths,
    # and a client's fixed `steps` must not pass for one prompt and fail for the next. The
    # extra block gets the same budget as every other.
    steps_per_block = resolve_steps_per_block(req.steps, req.steps_per_block,
                                              -(-asked_length // block_length), block_length)
    if not 0.0 <= req.temperature <= 100.0:
        raise InvalidRequest("temperature", "must be in [0, 100]")
    cls, params = parse_sampler_params(req.sampler, req.sampler_params)
    params = cls.finalize(params, gen_length, block_length)
    return ValidatedRequest(req, cls, params, gen_length, block_length, steps_per_block,
                            block_offset)


def resolve_steps_per_block(steps: int | None, steps_per_block: int | None, blocks: int,
                            block_length: int) -> int:
    """Each block's step budget from `steps` (a total over `blocks` blocks) or
    `steps_per_block`; neither: one step per position."""
    for name, value in (("steps", steps), ("steps_per_block", steps_per_block)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise InvalidRequest(name, f"must be an integer, got {value!r}")
    if steps is not None and steps_per_block is not None:
        raise InvalidRequest("steps_per_block", "give steps or steps_per_block, not both")
    if steps_per_block is not None:
        if not 1 <= steps_per_block <= block_length:
            raise InvalidRequest("steps_per_block", f"{steps_per_block} must be in [1, "
                                 f"{block_length}] (at most one step per position)")
        return steps_per_block
    if steps is None:
        return block_length
    if steps < blocks or steps % blocks or steps > blocks * block_length:
        raise InvalidRequest("steps", f"{steps} must be a multiple of the number of blocks "
                             f"({blocks}) and at most {blocks * block_length} (one per "
                             "position); or give steps_per_block")
    return steps // blocks


def default_block_length(gen_length: int, full_block: bool = False,
                         trained_block: int | None = None) -> int:
    """The block length of a canvas of `gen_length` whose request names none, worked out here
    only (help texts say it in words): the whole canvas for a model that decodes it as one
    (`full_block`, Dream); the model's `trained_block` where it divides the canvas; else L/4 as
    LLaDA's semi-autoregressive default, or the largest divisor of L below it, so that any
    canvas length works without the client choosing a block length. (Block-diffusion models
    have no default to choose: their block is their attention's, see `validate`.)"""
    if full_block:
        return gen_length
    if trained_block and gen_length % trained_block == 0:
        return trained_block
    return next(b for b in range(max(1, gen_length // 4), 0, -1) if gen_length % b == 0)

"""The decoding core: the engine loop, requests and their validation, the KV cache."""

from unmaskd.engine.loop import Engine, StepReport
from unmaskd.engine.sequence import GenerationRequest, InvalidRequest, SequenceResult

__all__ = ["Engine", "GenerationRequest", "InvalidRequest", "SequenceResult", "StepReport"]

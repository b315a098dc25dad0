"""Unmasking strategies: one file per sampler, found by name through `registry`."""

from unmaskd.sampler_plugins.base import Sampler, SamplerParams, StepView
from unmaskd.sampler_plugins.registry import get_sampler, registered_samplers

__all__ = ["Sampler", "SamplerParams", "StepView", "get_sampler", "registered_samplers"]

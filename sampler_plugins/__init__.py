"""Unmasking strategies: one file per sampler, found by name through `registry`."""

from sampler_plugins.base import Sampler, SamplerParams, StepView
from sampler_plugins.registry import get_sampler, registered_samplers

__all__ = ["Sampler", "SamplerParams", "StepView", "get_sampler", "registered_samplers"]

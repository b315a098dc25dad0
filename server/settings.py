"""`unmaskd serve` configuration: one pydantic-settings model read from flags and environment.

Every flag has an environment variable with the `UNMASKD_` prefix (`--max-batch-size 8` or
`UNMASKD_MAX_BATCH_SIZE=8`); a flag wins over the environment, which wins over the default.
The model flags (--model, --dtype, --cache, ...) are engine/model_args.py's ModelArgs, the same
declaration the other commands' flags are generated from; the fields here are serve's own.
"""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, CliSettingsSource, SettingsConfigDict
from unmaskd.engine.model_args import ModelArgs


class ServerSettings(BaseSettings, ModelArgs):
    """Serve a diffusion language model over HTTP: /generate (with per-step SSE streaming), an
    OpenAI-compatible /v1 API, A/B experiments between samplers, and Prometheus /metrics.
    Every flag can also be set by environment variable: --max-batch-size is
    UNMASKD_MAX_BATCH_SIZE."""

    model_config = SettingsConfigDict(
        env_prefix="UNMASKD_", cli_kebab_case=True, cli_prog_name="unmaskd serve",
        cli_exit_on_error=True, cli_hide_none_type=True, extra="ignore")

    host: str = Field("127.0.0.1", description="address to listen on (loopback by default)")
    port: int = Field(8000, ge=0, le=65535)
    max_batch_size: int = Field(32, ge=1, description="most requests decoded together per step")
    max_queue: int = Field(
        256, ge=1, description="requests waiting for a batch slot before new ones get 429")
    api_key: str | None = Field(
        None, min_length=1,
        description="require 'Authorization: Bearer KEY' (not on /health, /metrics) "
                    "(default: none, no key asked)")
    max_body_bytes: int = Field(
        1 << 20, ge=1024, description="largest request body accepted; larger ones get 413")
    ab_config: Path | None = Field(
        None, description="A/B experiments file (YAML or JSON) (default: none, no experiments)")
    ab_min_samples: int = Field(
        10, ge=2, description="requests per arm before an A/B report tests differences")
    shutdown_timeout: float = Field(
        30.0, ge=0, description="seconds to finish in-flight requests after SIGTERM")


# --help prints the class docstring verbatim; Python < 3.13 keeps its indentation.
ServerSettings.__doc__ = inspect.cleandoc(ServerSettings.__doc__ or "")


# pydantic-settings ends every flag's help with "(default: VALUE)", "null" for None
_APPENDED_DEFAULT = re.compile(r" \(default: [^()]*\)$")


def _add_flag(parser: argparse.ArgumentParser, *names: str, **kwargs) -> argparse.Action:
    """argparse's add_argument, except that a description which says its own default
    ("MODEL/policies", "config.json's") keeps only that one: `--policies` would otherwise
    read "(default: MODEL/policies) (default: null)"."""
    text = kwargs.get("help")
    if isinstance(text, str):
        own = _APPENDED_DEFAULT.sub("", text)
        if "(default: " in own:
            kwargs["help"] = own
    return parser.add_argument(*names, **kwargs)


def parse_settings(argv: list[str]) -> ServerSettings:
    """Flags, then `UNMASKD_*` environment variables, then defaults. Raises pydantic's
    ValidationError on bad values; argparse exits on unknown flags and prints --help."""
    source = CliSettingsSource(ServerSettings, add_argument_method=_add_flag)
    return CliApp.run(ServerSettings, cli_args=argv, cli_settings_source=source)

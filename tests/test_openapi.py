"""The OpenAPI document says what the server does: schemathesis runs every check against a live
server (coverage, fuzzing and stateful phases, 20 examples per operation, a fixed seed), and the
document's request schemas are held against the server's answers for bodies at their edges.

The server is the tiny model with its 128-token context, so every generated request decodes in
milliseconds.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from conftest import start_server
from jsonschema import Draft202012Validator

# A schema-valid body can still depend on what the schema cannot know: the model's context,
# block_length dividing the canvas, a sampler's params, what the chat template renders, the A/B
# experiments defined (the spec's 422 says so). Those operations may refuse schema-valid data
# with a 422; every other operation keeps the defaults. The schema names what the server knows
# (the served model, the registered samplers, the vocabulary) and the values it takes for the
# OpenAI fields a dLLM lacks, so schema-valid /v1 bodies are never a 400 or a 404.
SCHEMATHESIS_CONFIG = """
[[operations]]
include-path = "/generate"
checks.positive_data_acceptance.expected-statuses = ["2xx", "422", "429"]

[[operations]]
include-path-regex = "^/v1/(chat/)?completions$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "422", "429"]

[[operations]]
include-path = "/ab/{name}"
include-method = "PUT"
checks.positive_data_acceptance.expected-statuses = ["2xx", "404", "422", "429"]
"""


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    srv = start_server(tiny_model_dir, tmp_path_factory.mktemp("openapi_logs"))
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def spec(server) -> dict:
    return httpx.get(server.url + "/openapi.json").json()


def test_schemathesis_finds_nothing(server, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
         f"{server.url}/openapi.json", "--checks", "all", "--max-examples", "20", "--seed", "1",
         "--workers", "1", "--generation-database", "none", "--no-color"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]


def valid(spec: dict, schema: str, body: object) -> bool:
    root = {**spec, "$ref": f"#/components/schemas/{schema}"}
    return Draft202012Validator(root).is_valid(body)


USER = [{"role": "user", "content": "Ava has 2 apples. How many apples does Ava have?"}]


@pytest.mark.parametrize("body", [
    {}, {"prompt": "Question: 1 + 1?\nAnswer:"}, {"prompt": ""}, {"prompt": None},
    {"messages": USER}, {"prompt": None, "messages": USER}, {"messages": []},
    {"prompt": "x", "messages": USER}, {"prompt": "x", "stream": "yes"},
    {"prompt": "x", "stream": 1}, {"prompt": "x", "max_new_tokens": 0},
    {"prompt": "x", "temperature": -1}, {"prompt": "x", "seed": -1},
    {"prompt": "x", "reference": "7"}, {"prompt": "x", "steps": 0},
    {"prompt": "x", "sampler": ""}, {"prompt": "x", "sampler": "0"},  # schemathesis found
    {"prompt": "x", "sampler": "random"}, {"prompt": "x", "sampler": None},
])
def test_generate_schema_and_server_agree(server, spec, body):
    r = httpx.post(server.url + "/generate", json={"max_new_tokens": 8, **body}, timeout=60)
    assert r.status_code in (200, 422), r.text
    assert valid(spec, "GenerateRequest", body) == (r.status_code == 200), r.text


@pytest.mark.parametrize("arms", [
    {"a": {"sampler": "random"}}, {"": {"sampler": "random"}},
    {"0": {"sampler": "0"}},  # schemathesis found: an unknown sampler the schema allowed
    {"a" * 65: {"sampler": "random"}}, {}, {"a": {"sampler": "random", "weight": "2"}},
])
def test_arm_names_schema_and_server_agree(server, spec, arms):
    r = httpx.put(server.url + "/ab/agree", json={"arms": arms})
    assert r.status_code in (200, 422), r.text
    assert valid(spec, "ExperimentSpec", {"arms": arms}) == (r.status_code == 200), r.text


def served_model(spec: dict) -> str:
    (name,) = spec["components"]["schemas"]["CompletionRequest"]["properties"]["model"]["enum"]
    return name


# Bodies schemathesis found the schema allowing and the server refusing (prompt "", suffix "",
# function_call {}), and their neighbours: the schema now gives the values the server takes.
@pytest.mark.parametrize("body", [
    {"prompt": ""}, {"prompt": [""]}, {"prompt": []}, {"prompt": [[]]}, {"prompt": ["a", "b"]},
    {"prompt": [[1, 2], [3]]}, {"prompt": [1, 2]}, {"prompt": [[1, 2]]}, {"prompt": [-1]},
    {"prompt": [10**6]}, {"prompt": ["Question: 1 + 1?"]},
    {"suffix": ""}, {"suffix": None}, {"n": 1}, {"n": 2}, {"best_of": 1}, {"best_of": 2},
    {"echo": False}, {"echo": True}, {"logprobs": 0}, {"logprobs": 1}, {"top_p": 1},
    {"top_p": 0.5}, {"presence_penalty": 0}, {"frequency_penalty": 0.5}, {"logit_bias": {}},
    {"logit_bias": {"1": 1.0}}, {"sampler": ""}, {"sampler": "0"}, {"sampler": "random"},
])
def test_completion_schema_and_server_agree(server, spec, body):
    full = {"model": served_model(spec), "prompt": "Question: 1 + 1?\nAnswer:", "max_tokens": 8,
            **body}
    r = httpx.post(server.url + "/v1/completions", json=full, timeout=60)
    assert r.status_code in (200, 400, 422), r.text
    assert valid(spec, "CompletionRequest", full) == (r.status_code == 200), r.text


@pytest.mark.parametrize("body", [
    {"function_call": {}}, {"function_call": "none"}, {"function_call": "auto"},
    {"tool_choice": "none"}, {"tool_choice": {"type": "function"}}, {"tools": []},
    {"tools": [{"type": "function"}]}, {"functions": []}, {"response_format": {}},
    {"response_format": {"type": "text"}}, {"response_format": {"type": "json_object"}},
    {"logprobs": False}, {"logprobs": True}, {"top_logprobs": 0}, {"sampler": ""},
])
def test_chat_schema_and_server_agree(server, spec, body):
    full = {"model": served_model(spec), "messages": USER, "max_tokens": 8, **body}
    r = httpx.post(server.url + "/v1/chat/completions", json=full, timeout=60)
    assert r.status_code in (200, 400, 422), r.text
    assert valid(spec, "ChatCompletionRequest", full) == (r.status_code == 200), r.text


def test_refusals_keep_naming_the_field(server):
    """The documented error body: `detail` a string that starts with the field's name, the
    field, and every problem under `errors`."""
    r = httpx.post(server.url + "/generate", json={"prompt": "x", "max_new_tokens": "8"})
    body = r.json()
    assert r.status_code == 422 and body["field"] == "max_new_tokens"
    assert body["detail"].startswith("max_new_tokens: ")
    assert body["errors"] == [{"field": "max_new_tokens", "message": body["detail"][16:]}]
    r = httpx.put(server.url + "/ab/agree", json={"arms": {"": {"sampler": "random"}}})
    assert r.json()["detail"] == "arms: name '': String should have at least 1 character"

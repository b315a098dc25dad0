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
# block_length dividing the canvas, the sampler registry, the A/B experiments defined (the
# spec's 422 says so), and on /v1 the OpenAI features a dLLM lacks (its 400). Those operations
# may refuse schema-valid data with these statuses; every other operation keeps the defaults.
SCHEMATHESIS_CONFIG = """
[[operations]]
include-path = "/generate"
checks.positive_data_acceptance.expected-statuses = ["2xx", "404", "422", "429"]

[[operations]]
include-path-regex = "^/v1/(chat/)?completions$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "422", "429"]

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
])
def test_generate_schema_and_server_agree(server, spec, body):
    r = httpx.post(server.url + "/generate", json={"max_new_tokens": 8, **body}, timeout=60)
    assert r.status_code in (200, 422), r.text
    assert valid(spec, "GenerateRequest", body) == (r.status_code == 200), r.text


@pytest.mark.parametrize("arms", [
    {"a": {"sampler": "random"}}, {"": {"sampler": "random"}},
    {"a" * 65: {"sampler": "random"}}, {}, {"a": {"sampler": "random", "weight": "2"}},
])
def test_arm_names_schema_and_server_agree(server, spec, arms):
    r = httpx.put(server.url + "/ab/agree", json={"arms": arms})
    assert r.status_code in (200, 422), r.text
    assert valid(spec, "ExperimentSpec", {"arms": arms}) == (r.status_code == 200), r.text


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

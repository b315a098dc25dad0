"""The HTTP server, end to end: a real `unmaskd serve` process on loopback (one per module, with
an API key, --max-batch-size 4 and --max-queue 4), driven with httpx and the `openai` client.
A few failure-injection tests run the app in-process with FastAPI's TestClient, and the SIGTERM
test starts its own server.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from conftest import free_port
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from tokenizers import Tokenizer
from unmaskd.dllm import EMBEDDED_MODEL_DIR
from unmaskd.engine.loop import Engine
from unmaskd.sampler_plugins import Sampler, SamplerParams, get_sampler, registered_samplers
from unmaskd.sampler_plugins.policy_net import PolicyNet
from unmaskd.sampler_plugins.policy_store import STORE, Policy
from unmaskd.server.app import DrainingServer, create_app, serve_main
from unmaskd.server.settings import ServerSettings, parse_settings

API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
QUESTION = "Ava has 3 apples. She buys 4 more. How many apples does Ava have now?"
PROMPT = f"Question: {QUESTION}\nAnswer:"
SLOW = {"prompt": "Question: hi\nAnswer:", "sampler": "topk_confidence", "max_new_tokens": 512,
        "block_length": 512, "steps": 512}  # one token per step: seconds on the tiny model


def defaults_valid(name: str) -> bool:
    try:
        get_sampler(name).Params()
    except ValidationError:
        return False
    return True


USABLE = [n for n in sorted(registered_samplers()) if defaults_valid(n)]


@pytest.fixture(scope="module")
def server(launch_server):
    srv = launch_server("--api-key", API_KEY, "--max-batch-size", "4", "--max-queue", "4")
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def model_name(client) -> str:
    return client.get("/v1/models").json()["data"][0]["id"]


@pytest.fixture(scope="module")
def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def tokenizer(long_model_dir) -> Tokenizer:
    return Tokenizer.from_file(str(long_model_dir / "tokenizer.json"))


def scrape(client: httpx.Client) -> dict[tuple[str, frozenset], float]:
    text = client.get("/metrics").text
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def sse_payloads(lines) -> list:
    out = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def generate(client: httpx.Client, **body) -> dict:
    r = client.post("/generate", json={"prompt": PROMPT, **body})
    assert r.status_code == 200, r.text
    return r.json()


# ---- basics --------------------------------------------------------------------------------------
def test_health_metrics_and_models_endpoints(server, client, model_name):
    assert httpx.get(server.url + "/health").json() == {"status": "ok", "cache": "none"}  # no key
    assert httpx.get(server.url + "/metrics").status_code == 200
    oai = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)
    assert [m.id for m in oai.models.list().data] == [model_name]


def test_a_model_is_retrieved_by_its_id_or_is_a_404_in_openais_shape(client, oai, model_name):
    listed = client.get("/v1/models").json()["data"][0]
    assert client.get(f"/v1/models/{model_name}").json() == listed
    assert oai.models.retrieve(model_name).id == model_name
    r = client.get("/v1/models/org/no-such-model")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
    assert r.json()["error"]["param"] == "model" and "no-such-model" in r.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-4")


def test_metrics_carry_the_standard_process_series(server):
    """What a Prometheus user looks for first: the process's memory, CPU and file descriptors."""
    names = {s.name for fam in text_string_to_metric_families(
        httpx.get(server.url + "/metrics").text) for s in fam.samples}
    assert {"process_resident_memory_bytes", "process_virtual_memory_bytes",
            "process_cpu_seconds_total", "process_open_fds", "process_max_fds",
            "process_start_time_seconds", "python_info"} <= names, sorted(names)


def test_api_key_is_required_except_on_probes(server):
    for path in ("/samplers", "/v1/models", "/ab/x"):
        assert httpx.get(server.url + path).status_code == 401
    r = httpx.post(server.url + "/generate", json={"prompt": "x"},
                   headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(server.url + "/v1/completions", content=b"{not json")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_playground_page_speaks_the_generate_api(server):
    """The page is served without a key (its own calls send one) and every field its script
    posts to /generate is a GenerateRequest field, with streaming on."""
    from unmaskd.server.protocol import GenerateRequest

    r = httpx.get(server.url + "/playground")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    body = re.search(r"const body = \{(.*?)\};", r.text, re.S).group(1)
    fields = set(re.findall(r"(\w+):", body))
    assert {"prompt", "sampler", "sampler_params", "stream"} <= fields
    assert fields <= set(GenerateRequest.model_fields)
    assert "stream: true" in body
    for path in ('"/generate"', '"/samplers"', '"/v1/models"'):
        assert path in r.text


def test_samplers_lists_the_registry_with_schemas_and_defaults(client):
    body = client.get("/samplers").json()
    assert [s["name"] for s in body["samplers"]] == sorted(registered_samplers())
    for s in body["samplers"]:
        cls = get_sampler(s["name"])
        assert s["params_schema"] == cls.Params.model_json_schema()
        for field, value in s["defaults"].items():
            assert cls.Params.model_fields[field].default == value
    assert body["policies"] == []
    expected = "threshold" if get_sampler("threshold") else "topk_confidence"
    assert body["default"] == expected


# ---- /generate -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(registered_samplers()))
def test_generate_with_each_sampler(client, name):
    r = client.post("/generate", json={"prompt": PROMPT, "sampler": name, "max_new_tokens": 16,
                                       "block_length": 8, "steps": 16, "return_trace": True,
                                       "stop_at_eos": False})  # every block to its end
    if not defaults_valid(name):  # e.g. "learned" with no policy loaded
        assert r.status_code == 422 and r.json()["field"].startswith("sampler_params"), r.text
        return
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["sampler"] == name and out["arm"] is None and out["id"].startswith("gen-")
    assert out["sampler_params"] == get_sampler(name).Params().model_dump(mode="json")
    assert len(out["token_ids"]) == 16 and out["finish_reason"] in ("stop", "length")
    nfe = out["nfe"]
    assert 2 <= nfe <= 16 and out["tokens_per_step"] == 16 / nfe
    trace = out["trace"]
    assert all(0 <= t < nfe for t in trace) and sum(out["step_counts"]) == 16
    assert max(trace[:8]) < min(trace[8:])  # blocks are decoded in order
    assert 0 <= out["timing"]["queue_s"] <= out["timing"]["total_s"]


def test_generate_messages_use_the_chat_template(client):
    by_prompt = generate(client, max_new_tokens=16)
    r = client.post("/generate", json={"messages": [{"role": "user", "content": QUESTION}],
                                       "max_new_tokens": 16})
    assert r.status_code == 200 and r.json()["token_ids"] == by_prompt["token_ids"]


def test_generate_stream_sends_every_step_then_the_result(client):
    body = {"prompt": PROMPT, "sampler": "topk_confidence", "max_new_tokens": 12,
            "block_length": 4, "steps": 6, "seed": 5, "stop_at_eos": False}  # every position
    with client.stream("POST", "/generate", json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_payloads(r.iter_lines())
    assert events[-1] == "[DONE]"
    *steps, result = events[:-1]
    assert result == {**generate(client, **{k: v for k, v in body.items() if k != "prompt"}),
                      "id": result["id"], "timing": result["timing"]}
    assert [e["step"] for e in steps] == list(range(1, result["nfe"] + 1))
    decided: set[int] = set()
    for e in steps:
        assert e["committed"] and not decided & set(e["committed"])
        decided |= set(e["committed"])
        assert e["canvas"].count("░") == 12 - len(decided)
    assert decided == set(range(12))


def test_stream_events_are_utf8_json(client):
    """The canvas arrives with its masks as "░", as the README shows, not as "\\u2591"."""
    with client.stream("POST", "/generate", json={"prompt": PROMPT, "max_new_tokens": 8,
                                                  "stream": True}) as r:
        raw = r.read()
    assert "░".encode() in raw and b"\\u2591" not in raw
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"


def test_the_readme_curl_examples_work(client):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    commands = re.findall(r"^curl .*?(?=\n```)", readme, re.S | re.M)
    assert len(commands) >= 2
    for cmd in commands:
        path = re.search(r"localhost:8000(/\S+)", cmd).group(1)
        headers = dict(h.split(": ", 1) for h in re.findall(r"-H '([^']*)'", cmd))
        body = re.search(r"-d '(.*)'", cmd, re.S).group(1)
        r = client.post(path, content=body.encode(), headers=headers)
        assert r.status_code == 200, (cmd, r.text)


def test_batched_results_equal_sequential_ones(client):
    reqs = [{"prompt": f"Question: {n} has {i + 2} coins. How many coins does {n} have?\n"
                       f"Answer:",
             "sampler": USABLE[i % len(USABLE)], "seed": 11 * i, "temperature": 0.7 * (i % 2),
             "max_new_tokens": 32 * (1 + i % 2), "block_length": 8 * (1 + i % 2)}
            for i, n in enumerate(["Ava", "Ben", "Cleo", "Dan"])]
    sequential = [generate(client, **r) for r in reqs]
    before = scrape(client)

    async def together() -> list[dict]:
        async with httpx.AsyncClient(base_url=str(client.base_url), headers=AUTH,
                                     timeout=60) as ac:
            async def one(i: int) -> httpx.Response:
                await asyncio.sleep(0.02 * i)  # join while the others are mid-canvas
                return await ac.post("/generate", json=reqs[i])

            rs = await asyncio.gather(*(one(i) for i in range(len(reqs))))
        return [r.json() for r in rs]

    batched = asyncio.run(together())
    after = scrape(client)
    for s, b in zip(sequential, batched, strict=True):
        assert (b["token_ids"], b["nfe"], b["text"]) == (s["token_ids"], s["nfe"], s["text"])
    steps = total(after, "unmaskd_batch_size_count") - total(before, "unmaskd_batch_size_count")
    rows = total(after, "unmaskd_batch_size_sum") - total(before, "unmaskd_batch_size_sum")
    assert rows > steps  # some steps really decoded several requests together


# ---- OpenAI-compatible API -----------------------------------------------------------------------
def test_openai_completions(client, oai, model_name, tokenizer):
    knobs = {"sampler": "topk_confidence", "block_length": 8, "steps": 16}
    r = oai.completions.create(model=model_name, prompt=PROMPT, max_tokens=16, seed=3,
                               extra_body=knobs)
    ref = generate(client, max_new_tokens=16, seed=3, **knobs)
    eos = tokenizer.token_to_id("<|endoftext|>")
    ids = ref["token_ids"]
    assert r.choices[0].text == ref["text"] and r.id.startswith("cmpl-")
    assert r.choices[0].finish_reason == ("stop" if eos in ids else "length")
    assert r.usage.prompt_tokens == len(tokenizer.encode(PROMPT).ids)
    assert r.usage.completion_tokens == (ids.index(eos) if eos in ids else 16)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.unmaskd["nfe"] == ref["nfe"]
    chunks = list(oai.completions.create(model=model_name, prompt=PROMPT, max_tokens=16, seed=3,
                                         stream=True, extra_body=knobs,
                                         stream_options={"include_usage": True}))
    *texts, usage = chunks
    assert "".join(c.choices[0].text for c in texts) == r.choices[0].text
    assert sum(bool(c.choices[0].text) for c in texts) > 1  # streamed as it became final
    assert texts[-1].choices[0].finish_reason == r.choices[0].finish_reason
    assert all(c.usage is None for c in texts)
    assert usage.choices == [] and usage.usage == r.usage  # where OpenAI puts it


def test_openai_chat_completions_and_stream(client, oai, model_name):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    r = oai.chat.completions.create(model=model_name, messages=messages, max_tokens=16,
                                    temperature=0.5, seed=2)
    ref = generate(client, max_new_tokens=16, temperature=0.5, seed=2)
    assert r.choices[0].message.content == ref["text"]
    assert r.choices[0].message.role == "assistant" and r.id.startswith("chatcmpl-")
    chunks = list(oai.chat.completions.create(
        model=model_name, messages=messages, max_tokens=16, temperature=0.5, seed=2,
        stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ref["text"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.total_tokens == r.usage.total_tokens


def test_openai_stop_strings_cut_the_text(client, oai, model_name):
    full = oai.completions.create(model=model_name, prompt=PROMPT, max_tokens=16).choices[0]
    cut_at = full.text[len(full.text) // 2:][:2]
    part = oai.completions.create(model=model_name, prompt=PROMPT, max_tokens=16,
                                  stop=[cut_at]).choices[0]
    assert part.text == full.text[:full.text.index(cut_at)] and part.finish_reason == "stop"
    chunks = list(oai.completions.create(model=model_name, prompt=PROMPT, max_tokens=16,
                                         stop=[cut_at], stream=True))
    assert "".join(c.choices[0].text for c in chunks) == part.text  # never past the stop
    assert chunks[-1].choices[0].finish_reason == "stop"


def final_text_per_step(tokenizer: Tokenizer, out: dict, eos: int) -> list[str]:
    """From /generate's trace: after each step, the text of the run of committed positions
    from the canvas's left, up to the first EOS (a dLLM's text that can no longer change)."""
    ids, trace = out["token_ids"], out["trace"]
    texts = []
    for step in range(out["nfe"]):
        end = 0
        while end < len(ids) and trace[end] <= step and ids[end] != eos:
            end += 1
        texts.append(tokenizer.decode(ids[:end], skip_special_tokens=False))
    return texts


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_openai_streams_send_each_steps_newly_final_text(client, model_name, tokenizer, path):
    """As vLLM streams: a chunk for each step that made text final, carrying that text; the
    finish_reason and the rest on the last chunk; usage alone in one more chunk (choices [])
    with include_usage and nowhere without; then [DONE]."""
    chat = path.endswith("chat/completions")
    knobs = {"sampler": "topk_confidence", "block_length": 8, "steps": 16, "seed": 4}
    source = ({"messages": [{"role": "user", "content": QUESTION}]} if chat
              else {"prompt": PROMPT})
    r = client.post("/generate", json={**source, **knobs, "max_new_tokens": 16,
                                       "return_trace": True})
    ref = r.json()
    eos = tokenizer.token_to_id("<|endoftext|>")
    ids = ref["token_ids"]
    answer_tokens = ids.index(eos) if eos in ids else len(ids)
    texts = final_text_per_step(tokenizer, ref, eos)
    assert texts[-1] == ref["text"]
    expected = [b[len(a):] for a, b in zip(["", *texts], texts, strict=False) if b != a]
    assert len(expected) > 1  # a canvas that becomes final piece by piece
    body = {"model": model_name, **source, **knobs, "max_tokens": 16, "stream": True}
    for include_usage in (True, False):
        with client.stream("POST", path, json={
                **body, "stream_options": {"include_usage": include_usage}}) as r:
            assert r.status_code == 200
            events = sse_payloads(r.iter_lines())
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        if chat:
            assert chunks.pop(0)["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        if include_usage:
            usage = chunks.pop()
            assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == answer_tokens
        assert all(c["usage"] is None and len(c["choices"]) == 1 for c in chunks)
        pieces = [c["choices"][0]["delta"]["content"] if chat else c["choices"][0]["text"]
                  for c in chunks]
        reasons = [c["choices"][0]["finish_reason"] for c in chunks]
        assert pieces[:-1] == expected and pieces[-1] in ("", None)
        assert reasons == [None] * (len(chunks) - 1) + [ref["finish_reason"]]
        assert chunks[-1]["unmaskd"]["nfe"] == ref["nfe"]


@pytest.mark.parametrize("path,field,value", [
    ("/v1/completions", "n", 2), ("/v1/completions", "best_of", 3),
    ("/v1/completions", "logprobs", 5), ("/v1/completions", "echo", True),
    ("/v1/completions", "suffix", "tail"), ("/v1/completions", "presence_penalty", 0.5),
    ("/v1/completions", "logit_bias", {"17": 3}), ("/v1/completions", "top_p", 0.9),
    ("/v1/chat/completions", "logprobs", True), ("/v1/chat/completions", "top_logprobs", 2),
    ("/v1/chat/completions", "frequency_penalty", 1.0),
    ("/v1/chat/completions", "tools", [{"type": "function", "function": {"name": "f"}}]),
    ("/v1/chat/completions", "tool_choice", "auto"),
    ("/v1/chat/completions", "functions", [{"name": "f"}]),
    ("/v1/chat/completions", "response_format", {"type": "json_object"}),
    ("/v1/chat/completions", "made_up_field", 1),
])
def test_openai_refuses_fields_meaningless_for_a_dllm(client, model_name, path, field, value):
    base = ({"prompt": PROMPT} if path == "/v1/completions"
            else {"messages": [{"role": "user", "content": QUESTION}]})
    r = client.post(path, json={"model": model_name, **base, field: value})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field and r.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("field,value", [("stream", "yes"), ("stream", 1), ("max_tokens", "8"),
                                         ("temperature", True), ("stop_at_eos", "false"),
                                         ("stream_options", {"include_usage": "true"})])
def test_openai_booleans_and_numbers_must_be_json_ones(client, model_name, path, field, value):
    base = ({"prompt": PROMPT} if path == "/v1/completions"
            else {"messages": [{"role": "user", "content": QUESTION}]})
    r = client.post(path, json={"model": model_name, **base, field: value})
    assert r.status_code == 422 and r.json()["error"]["param"] == field, r.text


def test_openai_errors(client, oai, model_name):
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="gpt-4", prompt="x")
    with pytest.raises(openai.UnprocessableEntityError) as e:
        oai.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "x"}],
                                    max_tokens=0)
    assert e.value.body["param"] == "max_tokens"
    r = client.post("/v1/completions", json={"model": model_name, "prompt": ["a", "b"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = client.post("/v1/completions", json={"model": model_name, "prompt": PROMPT,
                                              "sampler": ""})
    assert r.status_code == 422 and r.json()["error"]["param"] == "sampler", r.text


# ---- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("body,field", [
    ({"sampler": "no_such_sampler"}, "sampler"),
    ({"sampler": ""}, "sampler"),  # not the default in disguise
    ({"sampler": "topk_confidence", "sampler_params": {"nope": 1}}, "sampler_params.nope"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 1000}, "max_new_tokens"),
    ({"max_new_tokens": 16, "block_length": 5}, "block_length"),
    ({"max_new_tokens": 16, "block_length": 8, "steps": 3}, "steps"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "1 " * 1100}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"messages": [{"role": "user", "content": "x"}]}, "prompt"),
    ({"prompt": None, "messages": []}, "messages"),
    ({"prompt": None, "messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"temperature": -1}, "temperature"),
    ({"seed": -1}, "seed"),
    ({"ab": "no_such_experiment"}, "ab"),
    ({"reference": "forty"}, "reference"),
    ({"max_new_tokens": "sixteen"}, "max_new_tokens"),
    ({"stream": "sometimes"}, "stream"),
    ({"stream": "yes"}, "stream"), ({"stream": "true"}, "stream"), ({"stream": 1}, "stream"),
    ({"return_trace": 0}, "return_trace"), ({"max_new_tokens": "16"}, "max_new_tokens"),
    ({"temperature": "0.5"}, "temperature"), ({"seed": True}, "seed"),
    ({"reference": "7"}, "reference"),
    ({"bogus_knob": 1}, "bogus_knob"),
])
def test_bad_generate_requests_are_422_naming_the_field(client, body, field):
    r = client.post("/generate", json={"prompt": PROMPT, **body})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and field in r.json()["detail"]


@pytest.mark.parametrize("path", ["/generate", "/v1/chat/completions"])
@pytest.mark.parametrize("messages,field,says", [
    ([{"role": "system", "content": "Be brief."}], "messages", "end them with a user message"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "messages",
     "end them with a user message"),
    ([{"role": "user", "content": [{"type": "text", "text": "a\udfff"}]}], "messages.0.content",
     "lone surrogate \\udfff at character 1"),
])
def test_chat_refusals_say_what_is_wrong(client, model_name, path, messages, field, says):
    body = {"messages": messages, **({"model": model_name} if path.startswith("/v1") else {})}
    r = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    error = r.json()["error"] if path.startswith("/v1") else r.json()
    assert error.get("param", error.get("field")) == field
    detail = error.get("message", error.get("detail"))
    assert detail.startswith(f"{field}: ") and says in detail and "Text" not in detail


@pytest.mark.parametrize("path,prompt", [("/generate", "\ud800"), ("/v1/completions", "\ud800"),
                                         ("/v1/completions", ["ok \ud800"])])
def test_a_lone_surrogate_in_a_prompt_is_named(client, model_name, path, prompt):
    body = {"prompt": prompt, **({"model": model_name} if path.startswith("/v1") else {})}
    r = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    error = r.json()["error"] if path.startswith("/v1") else r.json()
    assert error.get("param", error.get("field")) == "prompt"
    assert "not valid Unicode text: a lone surrogate \\ud800" in error.get(
        "message", error.get("detail"))


GARBAGE = [
    b"", b"not json", b"{", b"[]", b"null", b"123", b'"a string"', b"\xff\xfe\x00\x01",
    b"[" * 50_000, b'{"prompt": 5}', b'{"prompt": ["a", 1]}', b'{"prompt": {"a": 1}}',
    b'{"prompt": "x", "max_new_tokens": 1e400}', b'{"prompt": "x", "seed": 1e30}',
    b'{"prompt": "x", "max_new_tokens": 99999999999999999999999999999}',
    b'{"prompt": "x", "seed": 99999999999999999999999999}',
    b'{"prompt": "x", "temperature": NaN}', b'{"prompt": "x", "temperature": Infinity}',
    b'{"prompt": "x", "sampler_params": {"threshold": NaN}}',
    b'{"prompt": "x", "sampler_params": [1, 2]}', b'{"prompt": "x", "sampler": ["a"]}',
    b'{"prompt": "\\ud800", "max_new_tokens": 4}', b'{"prompt": "x", "user": "\\udfff"}',
    b'{"prompt": "x", "block_length": 0}', b'{"prompt": "x", "steps": -5}',
    b'{"\\ud800": 1}', b'{"messages": "hi", "model": 7}',
    b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
    b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}',
    b'{"model": ["x"], "prompt": [[1, 2], [3]]}', b'{"prompt": [99999999], "model": "m"}',
    b'{"arms": {}}', b'{"arms": {"a": {"sampler": 5}}}', b'{"arms": []}',
    b'{"arms": {"a": {"sampler": "random", "weight": -1}}}',
    b'{"request_id": 5, "score": 2}', b'{"request_id": "x", "score": NaN}',
]
ENDPOINTS = [("POST", "/generate"), ("POST", "/v1/completions"),
             ("POST", "/v1/chat/completions"), ("PUT", "/ab/garbage"),
             ("POST", "/ab/garbage/feedback")]


def test_garbage_never_gets_a_500(client):
    for method, path in ENDPOINTS:
        for body in GARBAGE:
            for ctype in ("application/json", "text/plain"):
                r = client.request(method, path, content=body, headers={"content-type": ctype})
                assert r.status_code < 500, (method, path, body[:80], r.text)
                r.json()
    for method, path in [("GET", "/ab/%ff%fe"), ("DELETE", "/generate"), ("GET", "/generate"),
                         ("GET", "/samplers?x=%00"), ("POST", "/health"), ("GET", "/nope"),
                         ("POST", "/v1/models")]:
        assert client.request(method, path).status_code < 500, (method, path)


@pytest.mark.parametrize("body,ctype", [
    (b'{"prompt": "\xff\xfe"}', "application/json"),  # not UTF-8
    (b'{"prompt": "x", "seed": ' + b"1" * 5000 + b"}", "application/json"),  # int too long
    (b"[" * 50_000, "application/json"),  # nested too deep
    (b"not json", "application/json"), (b'{"prompt": "x",}', "application/json"),
    (b"", "application/json"),
    (b'{"prompt": "x"}', "text/plain"),  # not sent as JSON
])
def test_unparseable_bodies_are_400_on_the_body_in_the_api_shape(client, body, ctype):
    """One status for a body that cannot be read as JSON, however it fails (Starlette's
    parsing or pydantic's): 400, as OpenAI answers; 422 is for JSON that breaks the schema."""
    r = client.post("/generate", content=body, headers={"content-type": ctype})
    assert r.status_code == 400 and r.json()["field"] == "body", r.text
    r = client.post("/v1/completions", content=body, headers={"content-type": ctype})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body", r.text
    r = client.post("/generate", content=b"[]", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "body", r.text  # JSON, not an object


def test_bodies_over_the_limit_are_413_whether_sized_or_chunked(client):
    big = b'{"prompt": "' + b"a" * (1 << 20) + b'"}'
    r = client.post("/generate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body", r.text
    r = client.post("/generate", content=iter([big[:1000], big[1000:]]),  # chunked: no length
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body", r.text
    r = client.post("/generate", content=iter([b'{"prompt": ', b'"Question: 1 + 1?", ',
                                               b'"max_new_tokens": 8}']),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200 and len(r.json()["token_ids"]) == 8, r.text


# ---- the engine loop: queueing, cancellation -----------------------------------------------------
def test_full_queue_is_429_and_cancelled_clients_free_their_slots(client):
    before = scrape(client)

    def load(name: str, n: int):
        return lambda: total(scrape(client), f"unmaskd_requests_{name}") == n

    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(base_url=str(client.base_url), headers=AUTH,
                                     timeout=60) as ac:
            slow = [asyncio.ensure_future(ac.post("/generate", json=SLOW)) for _ in range(4)]
            try:  # fill the batch, then the queue (in two waves: the queue bound is strict)
                assert await asyncio.to_thread(wait_for, load("running", 4))
                slow += [asyncio.ensure_future(ac.post("/generate", json=SLOW))
                         for _ in range(4)]
                assert await asyncio.to_thread(wait_for, load("waiting", 4))
                return await ac.post("/generate", json=SLOW)
            finally:
                for task in slow:
                    task.cancel()
                await asyncio.gather(*slow, return_exceptions=True)

    refused = asyncio.run(scenario())
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert wait_for(lambda: total(scrape(client), "unmaskd_requests_running") == 0
                    and total(scrape(client), "unmaskd_requests_waiting") == 0, 5)
    after = scrape(client)
    cancelled = total(after, "unmaskd_requests_total", status="cancelled") - total(
        before, "unmaskd_requests_total", status="cancelled")
    rejected = total(after, "unmaskd_requests_total", status="rejected") - total(
        before, "unmaskd_requests_total", status="rejected")
    assert (cancelled, rejected) == (8, 1)


def test_closing_a_stream_cancels_the_request(client, server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as other:
        start = time.monotonic()
        with other.stream("POST", "/generate", json={**SLOW, "stream": True}) as r:
            lines = r.iter_lines()
            while not next(lines).startswith("data: "):
                pass
            assert total(scrape(client), "unmaskd_requests_running") == 1
    assert wait_for(lambda: total(scrape(client), "unmaskd_requests_running") == 0, 5)
    assert time.monotonic() - start < 3  # the whole request would take several seconds
    assert generate(client, max_new_tokens=8)["finish_reason"] in ("stop", "length")


# ---- metrics -------------------------------------------------------------------------------------
def test_metrics_agree_with_what_clients_saw(client, oai, model_name, tokenizer):
    before = scrape(client)
    seen: dict[str, list[tuple[int, int, int]]] = defaultdict(list)  # gen_length, nfe, prompt
    n_prompt = len(tokenizer.encode(PROMPT).ids)
    for i, name in enumerate(USABLE[:3] * 2):
        out = generate(client, sampler=name, max_new_tokens=16 + 8 * (i % 2), seed=i)
        seen[name].append((len(out["token_ids"]), out["nfe"], n_prompt))
    r = oai.completions.create(model=model_name, prompt=PROMPT, max_tokens=24,
                               extra_body={"sampler": USABLE[0]})
    seen[USABLE[0]].append((24, r.unmaskd["nfe"], n_prompt))
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    for name, rows in seen.items():
        tokens, nfe, prompt = (sum(col) for col in zip(*rows, strict=True))
        assert delta("unmaskd_generated_tokens_total", sampler=name) == tokens
        assert delta("unmaskd_denoise_steps_total", sampler=name) == nfe
        assert delta("unmaskd_prompt_tokens_total", sampler=name) == prompt
        assert delta("unmaskd_tokens_per_step_count", sampler=name) == len(rows)
        assert math.isclose(delta("unmaskd_tokens_per_step_sum", sampler=name),
                            sum(g / n for g, n, _ in rows))
        done = delta("unmaskd_requests_total", sampler=name, status="stop") + delta(
            "unmaskd_requests_total", sampler=name, status="length")
        assert done == len(rows) == delta("unmaskd_request_latency_seconds_count", sampler=name)
        assert delta("unmaskd_queue_time_seconds_count", sampler=name) == len(rows)
    n_steps = delta("unmaskd_step_duration_seconds_count")
    assert n_steps == sum(n for rows in seen.values() for _, n, _ in rows)  # one at a time
    assert delta("unmaskd_batch_size_count") == delta("unmaskd_batch_size_sum") == n_steps
    assert delta("unmaskd_sampler_overhead_seconds_count") == n_steps
    assert total(after, "unmaskd_requests_running") == 0
    assert total(after, "unmaskd_requests_waiting") == 0
    assert all(dict(ls)["model"] == model_name for (n, ls) in after if n.startswith("unmaskd_"))


# ---- settings ------------------------------------------------------------------------------------
def test_settings_from_flags_then_environment(monkeypatch):
    monkeypatch.setenv("UNMASKD_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("UNMASKD_PORT", "9001")
    s = parse_settings(["--port", "9000", "--api-key", "k", "--shutdown-timeout", "2.5"])
    assert (s.port, s.max_batch_size, s.api_key, s.shutdown_timeout) == (9000, 7, "k", 2.5)
    assert (s.host, s.max_queue, s.ab_config) == ("127.0.0.1", 256, None)
    for bad in (["--max-batch-size", "0"], ["--max-queue", "0"], ["--api-key", ""],
                ["--max-body-bytes", "10"]):
        with pytest.raises(ValidationError):
            parse_settings(bad)


# ---- in-process failure injection ----------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> Engine:
    return Engine.from_dir(tiny_model_dir, default_gen_length=16)


class Exploding(Sampler):
    name = "exploding"

    def select(self, view):
        raise RuntimeError("sampler bug")


def test_a_failing_step_fails_its_batch_and_the_loop_goes_on(engine, tiny_model_dir,
                                                             monkeypatch):
    monkeypatch.setitem(registered_samplers(), "exploding", Exploding)
    app = create_app(ServerSettings(model=tiny_model_dir), engine)
    with TestClient(app) as tc:
        r = tc.post("/generate", json={"prompt": PROMPT, "sampler": "exploding"})
        assert r.status_code == 500 and "sampler bug" in r.json()["detail"]
        ok = tc.post("/generate", json={"prompt": PROMPT, "sampler": "topk_confidence"})
        assert ok.status_code == 200 and tc.get("/health").status_code == 200
        assert 'status="error"} 1.0' in tc.get("/metrics").text


def test_reference_is_scored_with_the_served_models_task(engine, tiny_model_dir, tiny_model_copy,
                                                         monkeypatch, capsys):
    """A request's `reference` is scored with the checker of the task the model folder's
    unmaskd_task.json names, picked once when the app is built; without the file, arithmetic's.
    A task no suite has stops `serve` with one line naming the file's field."""
    from unmaskd.dllm.checkpoint import TASK_FILE
    from unmaskd.engine.sequence import GenerationRequest, SequenceResult
    from unmaskd.server.scheduler import Finished
    from unmaskd.server.serving_generate import Prepared
    from unmaskd.tasks import UnknownTask

    def correct(model_dir: Path, text: str) -> bool | None:
        service = create_app(ServerSettings(model=model_dir), engine).state.service
        prepared = Prepared("r", engine.validate(GenerationRequest([1])), 1, None, None, 5, [])
        result = SequenceResult(0, text, [], 1, 1.0, [1], [], 0.0, "stop")
        return service.complete(prepared, Finished(result, 0.0, 0.0)).correct

    task_file = tiny_model_copy / TASK_FILE
    task_file.write_text('{"task": "longform", "gen_length": 16, "block_length": 4}')
    no_final = "9 - 4 = 5."  # longform wants its '#### N'; arithmetic takes the last number
    assert correct(tiny_model_copy, no_final + "\n#### 5") is True
    assert correct(tiny_model_copy, no_final) is False
    assert correct(tiny_model_dir, no_final) is True
    assert correct(tiny_model_dir, no_final + "\n#### 6") is False

    task_file.write_text('{"task": "poetry", "gen_length": 16, "block_length": 4}')
    with pytest.raises(UnknownTask, match="task: 'poetry' is not a known task"):
        create_app(ServerSettings(model=tiny_model_copy), engine)
    monkeypatch.setattr(DrainingServer, "run", lambda self: pytest.fail("listened"))
    assert serve_main(["--model", str(tiny_model_copy), "--port", "0"]) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert str(task_file) in line and "'poetry'" in line


class Gate(Sampler):
    """Holds the engine thread inside its step until `opened` is set."""

    name = "gate"
    opened = threading.Event()

    def select(self, view):
        assert self.opened.wait(60)
        return view.candidate


def test_a_burst_waits_for_free_batch_slots_instead_of_getting_429(engine, tiny_model_dir,
                                                                   monkeypatch):
    """Admission counts the batch's free slots: while the engine is inside a step with 1 of 4
    rows taken, 3 + --max-queue 2 more requests wait (3 of them would take the free slots at
    the next step); only the one after them is refused."""
    monkeypatch.setitem(registered_samplers(), "gate", Gate)
    Gate.opened.clear()
    app = create_app(ServerSettings(model=tiny_model_dir, max_batch_size=4, max_queue=2), engine)
    scheduler = app.state.service.scheduler
    with TestClient(app) as tc, ThreadPoolExecutor(7) as pool:
        def post(sampler: str) -> int:
            return tc.post("/generate", json={"prompt": PROMPT, "sampler": sampler}).status_code

        held = pool.submit(post, "gate")
        assert wait_for(lambda: len(scheduler._running) == 1)
        burst = [pool.submit(post, "topk_confidence") for _ in range(6)]
        assert wait_for(lambda: len(scheduler._waiting) + sum(f.done() for f in burst) == 6)
        Gate.opened.set()
        codes = sorted(f.result() for f in burst)
    assert held.result() == 200 and codes == [200] * 5 + [429]


class Echo(Sampler):
    """A plugin with a free-text parameter, echoed back in the result's sampler_params."""

    name = "echo"

    class Params(SamplerParams):
        note: str = ""

    def select(self, view):
        return view.candidate


def test_a_stream_carries_a_lone_surrogate_a_plugin_echoes(engine, tiny_model_dir,
                                                           monkeypatch):
    """Such a string has no UTF-8 form: its event goes out as escaped JSON, the stream goes on."""
    monkeypatch.setitem(registered_samplers(), "echo", Echo)
    app = create_app(ServerSettings(model=tiny_model_dir), engine)
    with TestClient(app) as tc:
        body = {"prompt": PROMPT, "sampler": "echo", "stream": True,
                "sampler_params": {"note": "\ud800"}}
        r = tc.post("/generate", content=json.dumps(body),  # escaped: httpx cannot encode it
                    headers={"content-type": "application/json"})
        events = sse_payloads(r.iter_lines())
    assert events[-1] == "[DONE]" and events[-2]["sampler_params"] == {"note": "\ud800"}
    assert "░" in events[0]["canvas"]


def test_health_is_503_when_the_engine_loop_dies(engine, tiny_model_dir):
    app = create_app(ServerSettings(model=tiny_model_dir), engine)
    with TestClient(app) as tc:
        scheduler = app.state.service.scheduler

        def broken_admit(job):
            raise RuntimeError("scheduler bug")

        scheduler._admit = broken_admit  # outside the per-step guard: kills the thread
        assert tc.post("/generate", json={"prompt": PROMPT}).status_code == 500
        assert wait_for(lambda: not scheduler.alive, 5)
        assert tc.get("/health").status_code == 503
        assert tc.post("/generate", json={"prompt": PROMPT}).status_code == 503


def test_prompts_are_tokenized_off_the_event_loop(engine, tiny_model_dir, monkeypatch):
    """Tokenizing a 1 MiB prompt takes seconds: on the event loop it would stall every other
    request and /health meanwhile."""
    on_loop: list[bool] = []
    real = engine.tokenizer

    class Recording:
        def __call__(self, text, **kwargs):
            try:
                asyncio.get_running_loop()
                on_loop.append(True)
            except RuntimeError:
                on_loop.append(False)
            return real(text, **kwargs)

        def __getattr__(self, name):
            return getattr(real, name)

    monkeypatch.setattr(engine, "tokenizer", Recording())
    app = create_app(ServerSettings(model=tiny_model_dir), engine)
    with TestClient(app) as tc:
        model = tc.get("/v1/models").json()["data"][0]["id"]
        for path, body in [("/generate", {"prompt": PROMPT}),
                           ("/v1/completions", {"model": model, "prompt": PROMPT,
                                                "max_tokens": 8}),
                           ("/v1/chat/completions", {"model": model, "max_tokens": 8, "messages": [
                               {"role": "user", "content": QUESTION}]})]:
            r = tc.post(path, json=body)
            assert r.status_code == 200, (path, r.text)
    assert on_loop == [False, False, False]

# ---- the embedded model in-process: a model that ends its answers with EOS -----------------------
ANSWERED = ("Question: Ava has 12 apples. Ava buys 7 more apples. How many apples does Ava have "
            "now?\nAnswer: 12 + 7 = 19.\n#### 19.\n#### 19")  # it answers with EOS at once


@pytest.fixture(scope="module")
def embedded() -> TestClient:
    app = create_app(ServerSettings(), Engine.from_dir(EMBEDDED_MODEL_DIR))
    with TestClient(app) as tc:
        yield tc


def test_an_empty_answer_uses_no_completion_tokens(embedded):
    body = {"model": "embedded", "prompt": ANSWERED, "max_tokens": 12, "block_length": 12,
            "sampler": "topk_confidence"}
    r = embedded.post("/v1/completions", json=body).json()
    assert r["choices"][0] == {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}
    assert r["usage"]["completion_tokens"] == 0, r["usage"]
    events = sse_payloads(embedded.post("/v1/completions", json={
        **body, "stream": True, "stream_options": {"include_usage": True}}).iter_lines())
    assert events[-2]["usage"]["completion_tokens"] == 0 and events[-2]["choices"] == []
    assert "".join(e["choices"][0]["text"] for e in events[:-2]) == ""


def test_stop_at_eos_has_one_default_on_generate_and_v1(embedded):
    """On by default on both: the text is the same, decoding ends at the answer's EOS."""
    knobs = {"sampler": "topk_confidence", "block_length": 12}
    gen = embedded.post("/generate", json={"prompt": PROMPT, **knobs}).json()
    whole = embedded.post("/generate", json={"prompt": PROMPT, **knobs,
                                             "stop_at_eos": False}).json()
    v1 = embedded.post("/v1/completions", json={"model": "embedded", "prompt": PROMPT,
                                                **knobs}).json()
    assert gen["text"] == whole["text"] == v1["choices"][0]["text"] != ""
    assert gen["nfe"] == v1["unmaskd"]["nfe"] < whole["nfe"]


def test_a_policy_outside_its_block_setting_decodes_with_a_warning(engine, tiny_model_dir):
    """Legitimate (docs/BENCHMARKS.md runs a full-diffusion policy in blocks of 12), but off
    the setting the policy learned: the answer says so, naming the field."""
    STORE.add(Policy("full16", PolicyNet(), {"block_length": 16, "gen_length": 16}))
    STORE.add(Policy("block8", PolicyNet(), {"block_length": 8, "gen_length": 16}))
    app = create_app(ServerSettings(model=tiny_model_dir), engine)
    try:
        with TestClient(app) as tc:
            def warnings(policy: str, block_length: int, path: str = "/generate") -> list[str]:
                body = {"prompt": PROMPT, "sampler": "learned", "max_new_tokens": 16,
                        "block_length": block_length, "sampler_params": {"policy": policy}}
                if path == "/generate":
                    r = tc.post(path, json=body)
                    assert r.status_code == 200, r.text
                    return r.json()["warnings"]
                body["max_tokens"] = body.pop("max_new_tokens")
                body["model"] = tc.get("/v1/models").json()["data"][0]["id"]
                r = tc.post(path, json=body)
                assert r.status_code == 200, r.text
                return r.json()["unmaskd"]["warnings"]

            assert warnings("full16", 16) == warnings("block8", 8) == []
            assert warnings("full16", 8) == [
                "sampler_params.policy: 'full16' was trained for full diffusion and decodes "
                "here in blocks of 8, outside the setting it learned"]
            assert warnings("block8", 16, "/v1/completions") == [
                "sampler_params.policy: 'block8' was trained for blocks of 8 and decodes here "
                "in full diffusion, outside the setting it learned"]
            assert warnings("block8", 4)[0].endswith("blocks of 8 and decodes here in blocks "
                                                     "of 4, outside the setting it learned")
    finally:
        STORE.remove("full16")
        STORE.remove("block8")


# ---- readiness: one real decode before listening -------------------------------------------------
def test_serve_decodes_once_before_it_listens(tiny_model_dir, monkeypatch):
    steps_at_listen: list[int] = []
    steps = [0]
    real_step = Engine.step

    def counting_step(self):
        steps[0] += 1
        return real_step(self)

    monkeypatch.setattr(Engine, "step", counting_step)
    monkeypatch.setattr(DrainingServer, "run", lambda self: steps_at_listen.append(steps[0]))
    assert serve_main(["--model", str(tiny_model_dir), "--port", "0"]) == 0
    assert steps_at_listen and steps_at_listen[0] > 0  # /health could not answer before


def test_serve_exits_with_one_line_when_the_model_cannot_decode(tiny_model_dir, monkeypatch,
                                                                 capsys):
    def broken_step(self):
        raise IndexError("index 99999 is out of bounds for dimension 2 with size 512\nmore")

    listened: list[bool] = []
    monkeypatch.setattr(Engine, "step", broken_step)
    monkeypatch.setattr(DrainingServer, "run", lambda self: listened.append(True))
    # the loader's own decode (Engine.self_test, top-k) finds it first, in one line
    assert serve_main(["--model", str(tiny_model_dir), "--port", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1:] == [
        f"error: cannot load the model from {tiny_model_dir}: the model loads but cannot "
        "decode: IndexError: index 99999 is out of bounds for dimension 2 with size 512"]
    # past it, the server's decode of what a request naming nothing gets (its default sampler)
    monkeypatch.setattr(Engine, "self_test", lambda self: None)
    assert serve_main(["--model", str(tiny_model_dir), "--port", "0"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert errors == [f"error: the model from {tiny_model_dir} loaded but cannot decode: "
                      "IndexError: index 99999 is out of bounds for dimension 2 with size 512"]
    assert not listened


def test_a_mask_token_id_the_model_cannot_use_stops_serve_with_one_line(long_model_dir):
    """It loads, but no request could decode: the server never says it is healthy."""
    run = subprocess.run([sys.executable, "-m", "unmaskd.cli", "serve", "--model",
                          str(long_model_dir), "--port", str(free_port()), "--threads", "1",
                          "--mask-token-id", "99999"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 2, run.stderr[-3000:]
    assert [line for line in run.stderr.splitlines() if line.startswith("error:")], run.stderr
    assert len([line for line in run.stderr.splitlines() if line.startswith("error:")]) == 1
    assert "Traceback" not in run.stderr and "Uvicorn running" not in run.stderr


# ---- shutdown ------------------------------------------------------------------------------------
def test_sigterm_drains_in_flight_requests_then_exits(launch_server):
    srv = launch_server(env={"UNMASKD_SHUTDOWN_TIMEOUT": "4"})
    results: dict[str, httpx.Response] = {}
    events: list = []
    first_event = threading.Event()

    def short() -> None:  # in flight at SIGTERM, finishes within the timeout
        body = {"prompt": PROMPT, "sampler": "topk_confidence", "max_new_tokens": 16,
                "block_length": 16, "steps": 16, "stream": True}
        with httpx.stream("POST", srv.url + "/generate", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line)
                    first_event.set()

    def long() -> None:  # cannot finish within the timeout: cancelled
        results["long"] = httpx.post(srv.url + "/generate", timeout=60,
                                     json={**SLOW, "max_new_tokens": 768, "block_length": 768,
                                           "steps": 768})

    threads = [threading.Thread(target=long), threading.Thread(target=short)]
    threads[0].start()
    with httpx.Client(base_url=srv.url) as c:
        assert wait_for(lambda: total(scrape(c), "unmaskd_requests_running") == 1, 10)
    threads[1].start()
    assert first_event.wait(20)
    os.kill(srv.proc.pid, signal.SIGTERM)
    assert wait_for(lambda: httpx.get(srv.url + "/health").status_code == 503, 10)
    refused = httpx.post(srv.url + "/generate", json={"prompt": PROMPT})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "10"
    for t in threads:
        t.join(30)
    # the long request (768 steps) was cancelled by the drain timeout, not waited for: its 503
    # below says so, without a wall-clock bound that a loaded machine breaks
    assert srv.proc.wait(20) == 0, srv.log()
    assert events[-1] == "data: [DONE]"
    final = json.loads(events[-2][len("data: "):])
    assert final["finish_reason"] in ("stop", "length") and final["nfe"] == 16
    assert results["long"].status_code == 503 and "shut down" in results["long"].json()["detail"]
    assert results["long"].headers["retry-after"] == "10"

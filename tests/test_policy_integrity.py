"""Integrity of what a learned policy is tied to: the dLLM's whole weights (fingerprint) and the
policy's own weights file (SHA-256 in policy.json); a refused policy says why when asked for."""

import hashlib
import json
import os

import pytest
from fastapi.testclient import TestClient
from unmaskd.engine.sequence import GenerationRequest, InvalidRequest
from unmaskd.sampler_plugins import policy_store
from unmaskd.sampler_plugins.policy_net import PolicyNet
from unmaskd.sampler_plugins.policy_store import STORE, model_fingerprint, save_policy


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Weight digests are cached per user; tests keep theirs to themselves."""
    monkeypatch.setenv("UNMASKD_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def fake_model(tmp_path):
    """A config and a 5 MiB weights file: the fingerprint reads bytes, not tensors."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"d_model": 8}))
    (model / "model.safetensors").write_bytes(os.urandom(5 << 20))
    return model


def flip_byte(path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_fingerprint_covers_bytes_past_the_first_4_mib(fake_model):
    before = model_fingerprint(fake_model)
    flip_byte(fake_model / "model.safetensors", (4 << 20) + 12345)  # same size
    assert model_fingerprint(fake_model) != before


def test_fingerprint_digests_are_cached_by_size_and_times(fake_model, tmp_path, monkeypatch):
    monkeypatch.setattr(policy_store, "RACY_NS", 0)  # cache even a file written just now
    weights = fake_model / "model.safetensors"
    first = model_fingerprint(fake_model)
    cache = json.loads((tmp_path / "cache/weight-digests.json").read_text())
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert cache[str(weights.resolve())]["sha256"] == digest

    def no_reading(*args):
        raise AssertionError("hashed again")

    monkeypatch.setattr(hashlib, "file_digest", no_reading)
    assert model_fingerprint(fake_model) == first  # a restart does not re-hash
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # changed: hashed again
    with pytest.raises(AssertionError, match="hashed again"):
        model_fingerprint(fake_model)


def test_fingerprint_without_a_writable_cache(fake_model, tmp_path, monkeypatch):
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("UNMASKD_CACHE_DIR", str(tmp_path / "not-a-dir"))
    assert model_fingerprint(fake_model) == model_fingerprint(fake_model)


@pytest.fixture
def policies(tiny_model_dir, tmp_path):
    """A policy root: `good`, `flipped` (one byte of its weights flipped after saving) and
    `other` (trained for another dLLM); loaded into STORE, removed afterwards."""
    root = tmp_path / "policies"
    for name, fingerprint in [("good", model_fingerprint(tiny_model_dir)),
                              ("flipped", model_fingerprint(tiny_model_dir)),
                              ("other", "0123456789abcdef")]:
        save_policy(PolicyNet(), root / name, {"block_length": 4, "gen_length": 16,
                                              "model": {"name": "x", "fingerprint": fingerprint}})
    weights = root / "flipped/policy.safetensors"
    flip_byte(weights, weights.stat().st_size - 1)  # in the tensor data, not the header
    loaded = STORE.load_dir(root, model_fingerprint(tiny_model_dir))
    yield loaded
    for name in ("good", "flipped", "other"):
        STORE.remove(name)
        STORE.skipped.pop(name, None)


def test_policies_failing_a_check_are_skipped_with_the_reason(policies):
    assert policies == ["good"]
    assert STORE.skipped["flipped"].startswith("policy.safetensors: its SHA-256 is not")
    assert STORE.skipped["other"].startswith("trained for dLLM 'x' (fingerprint 0123")


def test_skipped_policies_say_why_in_the_422(policies, tiny_engine):
    ids = tiny_engine.tokenizer("Question: Ava has 3 eggs.\nAnswer:")["input_ids"]
    for name, why in [("flipped", "was not loaded: policy.safetensors: its SHA-256 is not"),
                      ("other", "was not loaded: trained for dLLM 'x' .fingerprint 0123")]:
        with pytest.raises(InvalidRequest, match=why) as e:
            tiny_engine.validate(GenerationRequest(ids, "learned", {"policy": name}))
        assert e.value.field == "sampler_params.policy"
    tiny_engine.validate(GenerationRequest(ids, "learned", {"policy": "good"}))


def test_samplers_lists_skipped_policies_and_generate_names_the_reason(
        policies, tiny_engine, tiny_model_dir):
    from unmaskd.server.app import create_app
    from unmaskd.server.settings import ServerSettings

    with TestClient(create_app(ServerSettings(model=tiny_model_dir), tiny_engine)) as client:
        skipped = client.get("/samplers").json()["skipped_policies"]
        assert set(skipped) == {"flipped", "other"} and "trained for" in skipped["other"]
        r = client.post("/generate", json={"prompt": "Question: Ava has 3 eggs.\nAnswer:",
                                           "sampler": "learned",
                                           "sampler_params": {"policy": "flipped"}})
        assert r.status_code == 422 and r.json()["field"] == "sampler_params.policy"
        assert "corrupted or was replaced" in r.json()["detail"]


def test_no_policy_loaded_says_why_when_all_were_skipped(tiny_engine, monkeypatch):
    monkeypatch.setattr(STORE, "policies", {})
    monkeypatch.setattr(STORE, "skipped", {"b": "policy.json: unreadable", "a": "trained for"})
    ids = tiny_engine.tokenizer("Question: Ava has 3 eggs.\nAnswer:")["input_ids"]
    with pytest.raises(InvalidRequest, match="2 skipped at load; 'a': trained for"):
        tiny_engine.validate(GenerationRequest(ids, "learned"))

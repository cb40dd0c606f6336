"""`tenantai dev` driven by the official `openai` Python package.

scripts/test.sh starts `tenantai dev` on a free port with a fresh data dir and
runs this file with TENANTAI_BASE_URL and TENANTAI_CREDENTIALS set.
"""

import base64
import json
import math
import os
import pathlib
import struct
import time

import openai
import pytest

BASE_URL = os.environ["TENANTAI_BASE_URL"]
CREDENTIALS = json.loads(pathlib.Path(os.environ["TENANTAI_CREDENTIALS"]).read_text())
REFERENCE = json.loads(
    (pathlib.Path(__file__).parents[2] / "gpu-worker/tests/fixtures/minilm-reference.json").read_text()
)
MODEL = "all-MiniLM-L6-v2"


def client(key=None):
    return openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key=key or CREDENTIALS["api_key"], max_retries=0)


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_float_embeddings_equal_the_reference():
    # The API refuses empty strings (OpenAI does too); every other reference item is sent.
    items = [i for i in REFERENCE["items"] if i["text"]]
    resp = client().embeddings.create(model=MODEL, input=[i["text"] for i in items], encoding_format="float")
    assert resp.model == MODEL
    assert len(resp.data) == len(items)
    for item, got in zip(items, resp.data):
        assert len(got.embedding) == 384
        assert cosine(item["embedding"], got.embedding) >= 0.9999, item["text"]
    assert resp.usage.prompt_tokens == sum(i["tokens_with_special"] for i in items)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens


def test_base64_embeddings_equal_the_reference():
    item = REFERENCE["items"][0]
    resp = client().embeddings.create(model=MODEL, input=item["text"], encoding_format="base64")
    raw = base64.b64decode(resp.data[0].embedding)
    vector = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(vector) == 384
    assert cosine(item["embedding"], vector) >= 0.9999


def test_sdk_default_encoding_round_trips():
    # Without encoding_format the SDK asks for base64 and decodes it itself.
    item = REFERENCE["items"][1]
    resp = client().embeddings.create(model=MODEL, input=[item["text"]])
    assert cosine(item["embedding"], resp.data[0].embedding) >= 0.9999


def test_a_bad_key_raises_authentication_error():
    with pytest.raises(openai.AuthenticationError):
        client("tk_" + "x" * 43).embeddings.create(model=MODEL, input="hello")
    with pytest.raises(openai.AuthenticationError):
        client("not-a-key").models.list()


def test_models_list_and_retrieve():
    ids = [m.id for m in client().models.list()]
    assert MODEL in ids
    assert client().models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client().models.retrieve("gpt-9")


def test_bad_requests_raise_bad_request_error():
    with pytest.raises(openai.BadRequestError):
        client().embeddings.create(model=MODEL, input="")
    with pytest.raises(openai.NotFoundError):
        client().embeddings.create(model="no-such-model", input="hello")


def test_empty_strings_are_refused_like_openai():
    with pytest.raises(openai.BadRequestError):
        client().embeddings.create(model=MODEL, input=["ok", ""])


def tenantai(*args):
    """Runs the `tenantai` CLI against the instance under test; returns its JSON output."""
    import subprocess

    binary = pathlib.Path(__file__).parents[2] / "target/debug/tenantai"
    env = dict(os.environ, TENANTAI_ENDPOINT=BASE_URL, TENANTAI_ADMIN_TOKEN=CREDENTIALS["admin_token"])
    out = subprocess.run([str(binary), *args, "--json"], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_cli_manages_tenants_and_keys():
    tenant = tenantai("tenants", "create", "--name", "Globex", "--tier", "free")
    assert tenant["tier"] == "free"
    listed = tenantai("tenants", "list", "--limit", "100")
    assert tenant["id"] in [t["id"] for t in listed["data"]]
    key = tenantai("keys", "create", "--tenant", tenant["id"], "--name", "sdk")
    assert key["secret"].startswith("tk_")
    resp = client(key["secret"]).embeddings.create(model=MODEL, input="from a new tenant")
    assert len(resp.data[0].embedding) == 384
    keys = tenantai("keys", "list", "--tenant", tenant["id"])
    assert [k["key_id"] for k in keys["data"]] == [key["key_id"]]
    assert "secret" not in keys["data"][0]
    tenantai("keys", "revoke", "--tenant", tenant["id"], key["key_id"])
    with pytest.raises(openai.AuthenticationError):
        client(key["secret"]).embeddings.create(model=MODEL, input="after revocation")
    updated = tenantai("tenants", "update", tenant["id"], "--tier", "pro")
    assert updated["tier"] == "pro"
    capped = tenantai(
        "tenants", "update", tenant["id"], "--hard-cap", "true", "--alert-thresholds", "25,75", "--budget-micros", "900"
    )
    assert capped["hard_cap"] is True and capped["alert_thresholds"] == [25, 75]
    assert capped["monthly_budget_micros"] == 900
    # The one embeddings call above shows up in the tenant's usage (metering is asynchronous).
    for _ in range(100):
        report = tenantai("usage", "--tenant", tenant["id"], "--group-by", "model")
        if report["totals"]["requests"] == 1:
            break
        time.sleep(0.05)
    assert report["totals"]["requests"] == 1
    assert report["data"][0]["model"] == MODEL
    assert any(b["tenant_id"] == tenant["id"] for b in tenantai("usage", "--limit", "1000")["data"])
    models = tenantai("models", "list")
    assert any(m["model"] == MODEL and m["status"] == "live" for m in models["data"])


def test_health_and_the_data_directory():
    import httpx

    r = httpx.get(f"{BASE_URL}/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    # The data directory and what it holds are the owner's alone.
    data = pathlib.Path(os.environ["TENANTAI_CREDENTIALS"]).parent
    assert data.stat().st_mode & 0o777 == 0o700
    for name in ["tenantai.db", "credentials.json", "secrets.key"]:
        assert (data / name).stat().st_mode & 0o777 == 0o600, name

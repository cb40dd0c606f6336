"""Chat completions on `tenantai dev` through the official `openai` package:
streamed and whole answers from SmolLM2-135M-Instruct, prompt and completion
tokens and their cost in /v1/usage, the hard cap stopping a stream's next
request, rate limits with OpenAI's headers, another tenant's model refused, and
an upstream provider (llama.cpp's llama-server, when scripts/test.sh started one)
behind the same key.
"""

import json
import os
import pathlib
import time

import httpx
import openai
import pytest

BASE_URL = os.environ["TENANTAI_BASE_URL"]
CREDENTIALS = json.loads(pathlib.Path(os.environ["TENANTAI_CREDENTIALS"]).read_text())
MODEL = "SmolLM2-135M-Instruct"
PRICES = (150, 600)  # micro-dollars per 1k prompt and completion tokens (tenantai dev's)
LLAMA_URL = os.environ.get("TENANTAI_LLAMA_URL")


def admin(method, path, body=None, ok=True):
    r = httpx.request(method, f"{BASE_URL}/admin/v1{path}", json=body,
                      headers={"authorization": f"Bearer {CREDENTIALS['admin_token']}"})
    if ok:
        assert r.is_success, r.text
    return r.json()


def client(key=None):
    return openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key=key or CREDENTIALS["api_key"], max_retries=0)


def new_tenant(name, **patch):
    tenant = admin("POST", "/tenants", {"name": name, "tier": "pro"})
    if patch:
        admin("PATCH", f"/tenants/{tenant['id']}", patch)
    key = admin("POST", f"/tenants/{tenant['id']}/keys", {"name": name})["secret"]
    return tenant, key


def usage(key):
    r = httpx.get(f"{BASE_URL}/v1/usage?group_by=model", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(predicate, what, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def cost(prompt, completion):
    return -(-prompt * PRICES[0] // 1000) + -(-completion * PRICES[1] // 1000)


MESSAGES = [{"role": "user", "content": "Name one colour."}]


def test_streamed_and_whole_answers_move_usage_and_cost():
    _, key = new_tenant("chatter")
    c = client(key)
    whole = c.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0)
    answer = whole.parse()
    assert answer.model == MODEL and answer.choices[0].message.content
    assert 1 <= answer.usage.completion_tokens <= 8
    assert int(whole.headers["x-tenantai-cost-micros"]) == cost(answer.usage.prompt_tokens, answer.usage.completion_tokens)

    chunks = list(c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0.8,
                                            stream=True, stream_options={"include_usage": True}))
    assert all(ch.model == MODEL for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text and len([ch for ch in chunks if ch.choices]) >= 2, "the answer arrives in chunks"
    streamed_usage = chunks[-1].usage
    assert streamed_usage is not None and 1 <= streamed_usage.completion_tokens <= 8

    report = wait_for(lambda: (u := usage(key))["totals"]["requests"] == 2 and u, "usage of both calls")
    bucket = next(b for b in report["data"] if b["model"] == MODEL)
    assert bucket["prompt_tokens"] == answer.usage.prompt_tokens + streamed_usage.prompt_tokens
    assert bucket["completion_tokens"] == answer.usage.completion_tokens + streamed_usage.completion_tokens
    assert bucket["cost_micros"] == cost(answer.usage.prompt_tokens, answer.usage.completion_tokens) + cost(
        streamed_usage.prompt_tokens, streamed_usage.completion_tokens)


def test_the_hard_cap_stops_the_next_stream():
    _, key = new_tenant("capped", monthly_budget_micros=60, hard_cap=True)
    c = client(key)
    streams, refusal = 0, None
    for _ in range(40):
        try:
            chunks = list(c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, stream=True,
                                                    temperature=0.9))
        except openai.RateLimitError as e:
            refusal = e
            break
        assert chunks
        streams += 1
    assert refusal is not None, "the hard cap never stopped the streams"
    assert refusal.status_code == 429 and refusal.code == "insufficient_quota"
    assert streams >= 1
    report = wait_for(lambda: (u := usage(key))["totals"]["requests"] == streams and u, "usage of the streams")
    assert report["budget"]["month_to_date_cost_micros"] <= 60


def test_rate_limits_answer_with_openai_headers():
    _, key = new_tenant("limited", rate_limits={"requests_per_minute": 1, "tokens_per_minute": 1_000_000})
    c = client(key)
    c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    headers = e.value.response.headers
    assert e.value.code == "rate_limit_exceeded"
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert "retry-after" in headers


def test_another_tenants_model_is_refused():
    owner, owner_key = new_tenant("owner")
    _, other_key = new_tenant("stranger")
    worker = next(m for m in admin("GET", "/models")["data"] if m["model"] == MODEL)["endpoint"]
    admin("POST", "/models", {"model": "owner-chat", "version": "1", "kind": "chat", "backend": "worker",
                              "endpoint": worker, "price_per_1k_tokens_micros": 1,
                              "status": "live", "owner_tenant": owner["id"]})
    assert client(owner_key).chat.completions.create(model="owner-chat", messages=MESSAGES, max_tokens=2).choices
    with pytest.raises(openai.NotFoundError):
        client(other_key).chat.completions.create(model="owner-chat", messages=MESSAGES, max_tokens=2)


@pytest.mark.skipif(not LLAMA_URL, reason="no llama-server: scripts/test.sh starts one when llama.cpp is built "
                                          "(scripts/lib/llama.sh llama_build)")
def test_an_upstream_provider_serves_through_the_same_key():
    _, key = new_tenant("upstream user")
    admin("POST", "/models", {"model": "llama-upstream", "version": "1", "kind": "chat", "backend": "openai",
                              "endpoint": f"{LLAMA_URL}/v1", "upstream_model": MODEL,
                              "api_key_secret": "TENANTAI_TEST_LLAMA_KEY", "price_per_1k_tokens_micros": 100,
                              "price_per_1k_completion_tokens_micros": 200, "status": "live"})
    c = client(key)
    answer = c.chat.completions.create(model="llama-upstream", messages=MESSAGES, max_tokens=8, temperature=0)
    assert answer.model == "llama-upstream" and answer.choices[0].message.content
    chunks = list(c.chat.completions.create(model="llama-upstream", messages=MESSAGES, max_tokens=8, stream=True,
                                            stream_options={"include_usage": True}, temperature=0))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == answer.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
    report = wait_for(lambda: (u := usage(key))["totals"]["requests"] == 2 and u, "usage of the upstream calls")
    assert next(b for b in report["data"] if b["model"] == "llama-upstream")["completion_tokens"] == 2 * answer.usage.completion_tokens

    # A wrong upstream key: a clear 502 in the OpenAI shape, the key nowhere in it.
    admin("POST", "/models", {"model": "llama-badkey", "version": "1", "kind": "chat", "backend": "openai",
                              "endpoint": f"{LLAMA_URL}/v1", "api_key_secret": "TENANTAI_TEST_LLAMA_BAD_KEY",
                              "price_per_1k_tokens_micros": 1, "status": "live"})
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="llama-badkey", messages=MESSAGES, max_tokens=2)
    assert e.value.status_code == 502
    body = e.value.response.json()
    assert body["error"]["code"] == "bad_gateway" and "llama-badkey" in body["error"]["message"]
    assert os.environ["TENANTAI_TEST_LLAMA_BAD_KEY"] not in e.value.response.text

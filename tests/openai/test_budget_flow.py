"""A newcomer's path through metering on `tenantai dev`: usage and spend move
with every call in /v1/usage, a budget threshold sends a signed alert to the
tenant's webhook, and the hard cap stops calls with insufficient_quota.

scripts/test.sh starts `tenantai dev --alerts-interval-secs 1`, so the
in-process schedule runs every second.
"""

import hashlib
import hmac
import http.server
import json
import os
import pathlib
import threading
import time

import httpx
import openai
import pytest

BASE_URL = os.environ["TENANTAI_BASE_URL"]
CREDENTIALS = json.loads(pathlib.Path(os.environ["TENANTAI_CREDENTIALS"]).read_text())
MODEL = "all-MiniLM-L6-v2"
REPLAY_WINDOW_SECS = 300


def verify(secret, header, body, now):
    """The verifier README.md documents for webhook receivers."""
    parts = [p.split("=", 1) for p in header.split(",")]
    timestamp = int(dict(parts)["t"])
    if abs(now - timestamp) > REPLAY_WINDOW_SECS:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    # Several v1 signatures arrive while a secret rotates: any may match.
    return any(hmac.compare_digest(expected, v) for k, v in parts if k == "v1")


class Receiver(http.server.BaseHTTPRequestHandler):
    deliveries = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        Receiver.deliveries.append((self.headers.get("tenantai-signature", ""), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts"
    server.shutdown()


def admin(method, path, body=None):
    r = httpx.request(
        method,
        f"{BASE_URL}/admin/v1{path}",
        json=body,
        headers={"authorization": f"Bearer {CREDENTIALS['admin_token']}"},
    )
    assert r.is_success, r.text
    return r.json()


def usage(key):
    r = httpx.get(f"{BASE_URL}/v1/usage", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(predicate, what, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_usage_alerts_and_the_hard_cap(webhook):
    tenant = admin("POST", "/tenants", {"name": "Newcomer", "tier": "pro"})
    key = admin("POST", f"/tenants/{tenant['id']}/keys", {"name": "budget test"})["secret"]
    # 100 micro-dollars a month, as a hard cap, alerts to our webhook.
    updated = admin(
        "PATCH",
        f"/tenants/{tenant['id']}",
        {"monthly_budget_micros": 100, "hard_cap": True, "alert_webhook_url": webhook},
    )
    secret = updated["alert_webhook"]["secret"]
    client = openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key=key, max_retries=0)

    spent, calls = 0, 0
    refusal = None
    for i in range(200):
        texts = [f"request {i} input {j}: " + "hello world " * 10 for j in range(10)]
        try:
            raw = client.embeddings.with_raw_response.create(model=MODEL, input=texts, encoding_format="float")
        except openai.RateLimitError as e:
            refusal = e
            break
        calls += 1
        spent += int(raw.headers["x-tenantai-cost-micros"])
        tokens = raw.parse().usage.prompt_tokens
        assert tokens > 10 * 20
        # Usage and spend move with every call.
        report = wait_for(
            lambda: (u := usage(key))["totals"]["requests"] == calls and u, f"usage after call {calls}"
        )
        assert report["totals"]["cost_micros"] == spent
        assert report["budget"]["month_to_date_cost_micros"] == spent

    assert refusal is not None, "the hard cap never stopped the calls"
    assert refusal.status_code == 429
    assert refusal.code == "insufficient_quota"
    assert refusal.response.headers["x-should-retry"] == "false"
    assert spent <= 100 and calls > 5

    # Over half the budget is spent: the 50 % alert arrives, signed, once
    # (80 % and 100 % may be forecast, depending on the day of the month).
    def alerts():
        got = {}
        for header, body in Receiver.deliveries:
            assert verify(secret, header, body, int(time.time())), "bad signature"
            alert = json.loads(body)
            if alert["tenant_id"] == tenant["id"]:
                got.setdefault(alert["alert_id"], []).append(alert)
        return got

    wait_for(lambda: any(k.endswith(":50:crossed") for k in alerts()), "the 50 % alert")
    time.sleep(2.5)  # two more scheduled runs: nothing is sent twice
    got = alerts()
    assert all(len(v) == 1 for v in got.values()), got
    for (alert,) in got.values():
        assert alert["budget_micros"] == 100 and alert["spend_micros"] <= spent
        assert alert["kind"] in ("crossed", "forecast")
    assert not verify("whsec_wrong", Receiver.deliveries[0][0], Receiver.deliveries[0][1], int(time.time()))

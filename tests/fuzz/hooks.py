"""Schemathesis hooks for the tenant API's run (scripts/lib/fuzz.sh).

The stateful chain across the two documents: every tenant-API call made by the
run authenticates with a key made for it through the admin API, on a tenant
made for it through the admin API (create tenant -> create key -> call with it).
A tenant of its own keeps the run's rate limits, budgets and files apart from
the other tests' tenants.
"""

import json
import os
import urllib.request
import uuid

import schemathesis

BASE = os.environ["TENANTAI_BASE_URL"]
with open(os.environ["TENANTAI_CREDENTIALS"]) as f:
    ADMIN_TOKEN = json.load(f)["admin_token"]


def admin(method, path, body):
    req = urllib.request.Request(
        f"{BASE}/admin/v1{path}",
        method=method,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


@schemathesis.auth()
class FreshTenantKey:
    """A new tenant and a key with every scope (the default), made once per run."""

    def get(self, case, ctx):
        tenant = admin("POST", "/tenants", {"name": f"fuzz-{uuid.uuid4().hex[:8]}", "tier": "pro"})
        key = admin("POST", f"/tenants/{tenant['id']}/keys", {"name": "fuzz"})
        return key["secret"]

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"

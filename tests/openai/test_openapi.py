"""The OpenAPI documents of `tenantai dev`: both served without credentials,
valid OpenAPI 3.1 by `openapi-spec-validator`, equal to the committed copies
under docs/, and true to what the official `openai` SDK sends and receives.

The SDK runs against tenantai dev through an httpx client whose event hooks
record every request (method, path, query, body) and every JSON answer. Each
exchange must match a documented operation; its JSON body must validate
against the operation's requestBody schema (refs resolved in the document),
and every field it sends must be a documented property (so a schema that
forgets a field fails even where extra fields are allowed); a multipart
upload's form fields must be documented properties too; its query
parameters must be documented; the answer's status must be documented and
its JSON body must validate against that response's schema.
"""

import json
import os
import pathlib
import re
import time
import urllib.parse

import httpx
import jsonschema
import openai
import pytest
from openapi_spec_validator import validate

BASE_URL = os.environ["TENANTAI_BASE_URL"]
CREDENTIALS = json.loads(pathlib.Path(os.environ["TENANTAI_CREDENTIALS"]).read_text())
ROOT = pathlib.Path(__file__).resolve().parents[2]
EMBED = "all-MiniLM-L6-v2"
CHAT = "SmolLM2-135M-Instruct"
DOCUMENTS = {"/openapi.json": "openapi.json", "/admin/v1/openapi.json": "openapi-admin.json"}


def fetch(path):
    r = httpx.get(f"{BASE_URL}{path}")  # no credentials: the documents hold no data
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


@pytest.fixture(scope="module")
def tenant_doc():
    return fetch("/openapi.json")


@pytest.mark.parametrize("path", DOCUMENTS)
def test_the_served_documents_are_valid_openapi_3_1_and_committed(path):
    doc = fetch(path)
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema and its rules
    committed = json.loads((ROOT / "docs" / DOCUMENTS[path]).read_text())
    assert doc == committed, f"docs/{DOCUMENTS[path]} is stale: TENANTAI_BLESS=1 cargo test -p tenantai --lib http::openapi"


def test_the_validator_refuses_a_broken_document(tenant_doc):
    """The check above can fail: an undeclared path parameter, a repeated operationId."""
    unresolved = json.loads(json.dumps(tenant_doc))
    del unresolved["paths"]["/v1/files/{id}"]["get"]["parameters"]
    with pytest.raises(Exception, match="id"):
        validate(unresolved)
    repeated = json.loads(json.dumps(tenant_doc))
    repeated["paths"]["/v1/files"]["get"]["operationId"] = "create_file"
    with pytest.raises(Exception, match="create_file"):
        validate(repeated)


def test_every_operation_answers_errors_in_the_openai_shape(tenant_doc):
    admin_doc = fetch("/admin/v1/openapi.json")
    error = admin_doc["components"]["schemas"]["ErrorObject"]
    assert set(error["required"]) == {"message", "type", "param", "code"}
    for doc in (tenant_doc, admin_doc):
        for path, item in doc["paths"].items():
            for method, op in item.items():
                default = op["responses"]["default"]["content"]["application/json"]["schema"]
                assert default == {"$ref": "#/components/schemas/ErrorBody"}, (method, path)
    # The documented shape is what the API answers.
    r = httpx.get(f"{BASE_URL}/v1/models", headers={"authorization": "Bearer tk_nope"})
    assert r.status_code == 401
    check_schema(tenant_doc, response_schema(tenant_doc, "get", "/v1/models", 401), r.json())


# ---- the document as a lookup -------------------------------------------------


def deref(doc, schema):
    while "$ref" in schema:
        node = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def properties(doc, schema):
    """The property names a schema declares, through $ref and allOf."""
    schema = deref(doc, schema)
    names = set(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        names |= properties(doc, part)
    return names


def operation(doc, method, path):
    """The documented operation serving `method path`, or a failed assertion."""
    for template, item in doc["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method in item:
            return item[method]
    raise AssertionError(f"{method.upper()} {path} is not in the document")


def response_schema(doc, method, path, status):
    responses = operation(doc, method, path)["responses"]
    response = responses.get(str(status)) or responses.get("default")
    assert response, f"{method.upper()} {path}: status {status} is not documented"
    return response["content"]["application/json"]["schema"]


def check_schema(doc, schema, value):
    """Validates `value` against `schema`, its $refs resolved in `doc`."""
    rooted = {**schema, "components": doc["components"]}
    jsonschema.Draft202012Validator(rooted).validate(value)


# ---- what the SDK sends -------------------------------------------------------


class Recorder:
    """httpx event hooks that keep each request and its JSON answer."""

    def __init__(self):
        self.exchanges = []

    def request(self, request):
        request.read()
        self.exchanges.append({"method": request.method.lower(), "url": request.url,
                               "content_type": request.headers.get("content-type", ""),
                               "body": request.content, "status": None, "answer": None})

    def response(self, response):
        exchange = self.exchanges[-1]
        exchange["status"] = response.status_code
        if response.headers.get("content-type", "").startswith("application/json"):
            response.read()
            exchange["answer"] = response.json()


def hooks(recorder):
    return {"request": [recorder.request], "response": [recorder.response]}


def recording_client(recorder, key):
    http = httpx.Client(event_hooks=hooks(recorder), timeout=120)
    return openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key=key, max_retries=0, http_client=http)


def new_tenant(recorder):
    """A pro tenant and a key (its own rate limits), made through the admin API."""
    admin = httpx.Client(base_url=f"{BASE_URL}/admin/v1", event_hooks=hooks(recorder),
                         headers={"authorization": f"Bearer {CREDENTIALS['admin_token']}"})
    tenant = admin.post("/tenants", json={"name": "openapi", "tier": "pro"}).json()
    admin.patch(f"/tenants/{tenant['id']}", json={"monthly_budget_micros": 50_000_000})
    key = admin.post(f"/tenants/{tenant['id']}/keys", json={"name": "sdk", "scopes": ["embeddings", "chat", "models", "batches", "usage"]}).json()
    admin.get(f"/tenants/{tenant['id']}/keys", params={"limit": 5})
    admin.get(f"/tenants/{tenant['id']}")
    admin.get(f"/tenants/{tenant['id']}/usage", params={"group_by": "day,model"})
    assert all(e["status"] in (200, 201) for e in recorder.exchanges), recorder.exchanges
    return tenant["id"], key["secret"]


def form_fields(exchange):
    boundary = exchange["content_type"].split("boundary=", 1)[1].strip('"')
    names = re.findall(rb'Content-Disposition: form-data; name="([^"]+)"', exchange["body"])
    assert names and boundary.encode() in exchange["body"]
    return {n.decode() for n in names}


def check_exchange(doc, exchange):
    method, url = exchange["method"], exchange["url"]
    op = operation(doc, method, url.path)
    where = f"{method.upper()} {url.path}"
    declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
    sent = set(urllib.parse.parse_qs(url.query.decode()))
    assert sent <= declared, f"{where}: undocumented query parameters {sent - declared}"
    if exchange["body"]:
        media = exchange["content_type"].split(";")[0]
        content = op["requestBody"]["content"]
        assert media in content, f"{where}: {media} is not a documented request body"
        schema = content[media]["schema"]
        if media == "application/json":
            body = json.loads(exchange["body"])
            check_schema(doc, schema, body)
            fields = set(body)
        else:
            fields = form_fields(exchange)
        missing = fields - properties(doc, schema)
        assert not missing, f"{where}: the SDK sends {missing}, which the document does not describe"
    if exchange["answer"] is not None:
        check_schema(doc, response_schema(doc, method, url.path, exchange["status"]), exchange["answer"])


def batch_file(n):
    lines = [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": EMBED, "input": f"text number {i}"}} for i in range(n)]
    return ("\n".join(json.dumps(line) for line in lines) + "\n").encode()


def test_the_admin_calls_match_the_admin_document():
    admin_doc = fetch("/admin/v1/openapi.json")
    rec = Recorder()
    new_tenant(rec)
    for e in rec.exchanges:
        check_exchange(admin_doc, e)
    ops = {operation(admin_doc, e["method"], e["url"].path)["operationId"] for e in rec.exchanges}
    assert ops == {"create_tenant", "update_tenant", "create_key", "list_keys", "retrieve_tenant",
                   "get_tenant_usage"}, ops


def test_the_sdks_requests_and_answers_match_the_document(tenant_doc):
    _, key = new_tenant(Recorder())
    rec = Recorder()
    c = recording_client(rec, key)

    c.embeddings.create(model=EMBED, input="hello")  # the SDK asks for base64 by default
    c.embeddings.create(model=EMBED, input=["a", "b"], encoding_format="float", user="end-user-1")
    c.models.list()
    c.models.retrieve(EMBED)

    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name one colour."}]
    c.chat.completions.create(model=CHAT, messages=messages, max_tokens=8, temperature=0, seed=7)
    chunks = list(c.chat.completions.create(model=CHAT, messages=messages, max_completion_tokens=8,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks and chunks[-1].usage is not None
    # Tools and structured output pass through to the backend; the bundled
    # worker has neither and refuses them in the documented error shape.
    tools = [{"type": "function", "function": {
        "name": "colour", "description": "Looks a colour up.",
        "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}]
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model=CHAT, messages=messages, tools=tools, tool_choice="auto", max_tokens=8)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model=CHAT, messages=messages, max_tokens=8,
                                  response_format={"type": "json_object"})

    f = c.files.create(file=("lines.jsonl", batch_file(3)), purpose="batch",
                       expires_after={"anchor": "created_at", "seconds": 3600})
    c.files.retrieve(f.id)
    c.files.list(purpose="batch", limit=5)
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h",
                         metadata={"job": "openapi"},
                         output_expires_after={"anchor": "created_at", "seconds": 7200})
    c.batches.retrieve(b.id)
    c.batches.list(limit=2)
    try:
        c.batches.cancel(b.id)
    except openai.ConflictError:
        pass  # it finished first: a 409, documented too
    deadline = time.time() + 120
    while c.batches.retrieve(b.id).status not in ("completed", "failed", "expired", "cancelled"):
        assert time.time() < deadline, "the batch did not end"
        time.sleep(0.25)
    c.files.delete(f.id)

    for e in rec.exchanges:
        check_exchange(tenant_doc, e)
    ops = {operation(tenant_doc, e["method"], e["url"].path)["operationId"] for e in rec.exchanges}
    assert ops == {"create_embedding", "list_models", "retrieve_model", "create_chat_completion",
                   "create_file", "retrieve_file", "list_files", "delete_file", "create_batch",
                   "retrieve_batch", "list_batches", "cancel_batch"}, ops
    statuses = {e["status"] for e in rec.exchanges}
    assert {200, 400} <= statuses, statuses


def test_a_field_the_document_omits_fails_the_check(tenant_doc):
    """The checks above can fail: without `metadata`, the SDK's batch body is refused."""
    doc = json.loads(json.dumps(tenant_doc))
    del doc["components"]["schemas"]["CreateBatch"]["properties"]["metadata"]
    exchange = {"method": "post", "url": httpx.URL(f"{BASE_URL}/v1/batches"),
                "content_type": "application/json", "status": None, "answer": None,
                "body": json.dumps({"input_file_id": "file-x", "endpoint": "/v1/embeddings",
                                    "completion_window": "24h", "metadata": {"a": "b"}}).encode()}
    check_exchange(tenant_doc, exchange)
    with pytest.raises(jsonschema.ValidationError):  # CreateBatch refuses unknown fields
        check_exchange(doc, exchange)
    del doc["paths"]["/v1/batches"]["post"]
    with pytest.raises(AssertionError, match="not in the document"):
        check_exchange(doc, exchange)

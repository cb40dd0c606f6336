"""The Files and Batch APIs on `tenantai dev` through the official `openai`
package: an embeddings batch whose vectors match sentence-transformers' own
(the recorded reference), a chat batch, listing and paging, the errors the SDK
maps (409 on cancelling a finished batch, without retries; 404 for another
tenant's ids), `tenantai batches submit --wait`, and `gpu-worker work` draining
a deployment's jobs queue and exiting 0 on SIGTERM.
"""

import io
import json
import math
import os
import pathlib
import signal
import socket
import subprocess
import time

import httpx
import openai

BASE_URL = os.environ["TENANTAI_BASE_URL"]
CREDENTIALS = json.loads(pathlib.Path(os.environ["TENANTAI_CREDENTIALS"]).read_text())
ROOT = pathlib.Path(__file__).resolve().parents[2]
REFERENCE = json.loads((ROOT / "gpu-worker/tests/fixtures/minilm-reference.json").read_text())
MODEL_DIR = os.environ.get("TENANTAI_MODEL_DIR", str(ROOT / "models/all-MiniLM-L6-v2"))
EMBED = "all-MiniLM-L6-v2"
CHAT = "SmolLM2-135M-Instruct"


def client(key=None, base=BASE_URL, retries=0):
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key or CREDENTIALS["api_key"], max_retries=retries)


def admin(method, path, body=None, base=BASE_URL, token=None):
    r = httpx.request(method, f"{base}/admin/v1{path}", json=body,
                      headers={"authorization": f"Bearer {token or CREDENTIALS['admin_token']}"})
    assert r.is_success, r.text
    return r.json()


def jsonl(lines):
    return ("\n".join(json.dumps(line) for line in lines) + "\n").encode()


def embed_lines(texts):
    return [{"custom_id": f"item-{i}", "method": "POST", "url": "/v1/embeddings",
             "body": {"model": EMBED, "input": t}} for i, t in enumerate(texts)]


def wait_done(c, batch_id, timeout=240.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        b = c.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "expired", "cancelled"):
            return b
        time.sleep(0.25)
    raise AssertionError(f"batch {batch_id} did not end: {b.status} {b.request_counts}")


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_an_embeddings_batch_matches_the_reference_vectors():
    c = client()
    items = REFERENCE["items"]
    f = c.files.create(file=("reference.jsonl", io.BytesIO(jsonl(embed_lines([i["text"] for i in items])))), purpose="batch")
    assert (f.object, f.purpose, f.filename) == ("file", "batch", "reference.jsonl")
    assert f.bytes > 0 and f.expires_at > f.created_at
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h",
                         metadata={"suite": "sdk"})
    assert b.status == "validating" and b.metadata == {"suite": "sdk"}
    b = wait_done(c, b.id)
    assert b.status == "completed", b
    # The empty text is refused as the sync API refuses it; every other line matches.
    empty = [n for n, i in enumerate(items) if i["text"] == ""]
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (len(items), len(items) - 1, 1)
    assert b.usage.input_tokens == sum(i["tokens_with_special"] for i in items if i["text"])
    lines = [json.loads(line) for line in c.files.content(b.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == sorted(f"item-{n}" for n in range(len(items)) if n not in empty)
    for line in lines:
        item = items[int(line["custom_id"].split("-")[1])]
        body = line["response"]["body"]
        assert line["response"]["status_code"] == 200
        assert body["usage"]["prompt_tokens"] == item["tokens_with_special"]
        got = cosine(body["data"][0]["embedding"], item["embedding"])
        assert got >= 0.9999, f"{item['text']!r}: cosine {got} against sentence-transformers"
    [error] = [json.loads(line) for line in c.files.content(b.error_file_id).text.splitlines()]
    assert error["custom_id"] == f"item-{empty[0]}" and error["response"]["status_code"] == 400
    try:
        c.embeddings.create(model=EMBED, input="")
        raise AssertionError("the sync API took an empty input")
    except openai.BadRequestError as e:
        assert e.body["message"] == error["response"]["body"]["error"]["message"], "the sync API's own error"
    outputs = [x.id for x in c.files.list(purpose="batch_output")]
    assert b.output_file_id in outputs


def test_a_chat_batch_answers_each_line_and_counts_its_tokens():
    c = client()
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": CHAT, "messages": [{"role": "user", "content": q}], "max_tokens": 8, "temperature": 0}}
             for i, q in enumerate(["Name a colour.", "Say hello.", "Count to three."])]
    lines.append({"custom_id": "too-big", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": CHAT, "messages": "not a list"}})
    f = c.files.create(file=("chat.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    b = wait_done(c, c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id)
    assert b.status == "completed", b
    assert (b.request_counts.completed, b.request_counts.failed) == (3, 1)
    assert b.usage.output_tokens > 0 and b.usage.input_tokens > 0
    answers = [json.loads(x) for x in c.files.content(b.output_file_id).text.splitlines()]
    for a in answers:
        choice = a["response"]["body"]["choices"][0]
        assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert sum(a["response"]["body"]["usage"]["completion_tokens"] for a in answers) == b.usage.output_tokens
    errors = [json.loads(x) for x in c.files.content(b.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == ["too-big"]
    assert errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"]["error"]["type"] == "invalid_request_error"


def test_listing_pages_and_the_errors_the_sdk_maps():
    c = client()
    f = c.files.create(file=("one.jsonl", io.BytesIO(jsonl(embed_lines(["one line"])))), purpose="batch")
    made = [c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h").id for _ in range(3)]
    seen = [b.id for b in c.batches.list(limit=1)]  # the SDK follows has_more / after
    assert seen[:3] == made[::-1], "newest first, every page"
    done = wait_done(c, made[0])
    started = time.time()
    try:
        client(retries=2).batches.cancel(done.id)
        raise AssertionError("cancelling a finished batch succeeded")
    except openai.ConflictError as e:
        assert e.response.headers["x-should-retry"] == "false"
    assert time.time() - started < 0.5, "the SDK did not retry the 409"
    tenant = admin("POST", "/tenants", {"name": "other-sdk", "tier": "pro"})
    other = client(admin("POST", f"/tenants/{tenant['id']}/keys", {"name": "k"})["secret"])
    for call in (lambda: other.batches.retrieve(done.id), lambda: other.files.retrieve(f.id),
                 lambda: other.files.content(f.id)):
        try:
            call()
            raise AssertionError("another tenant's id was found")
        except openai.NotFoundError:
            pass
    assert f.id not in [x.id for x in other.files.list()]
    assert c.files.delete(f.id).deleted


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    deadline = time.time() + 180
    while time.time() < deadline:
        assert proc.poll() is None, f"{what} exited early"
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{what} did not start")


def test_the_cli_submits_waits_and_downloads(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl(embed_lines(["first", "second", "third"])))
    out = tmp_path / "out.jsonl"
    env = dict(os.environ, TENANTAI_ENDPOINT=BASE_URL, TENANTAI_API_KEY=CREDENTIALS["api_key"])
    done = subprocess.run([ROOT / "target/debug/tenantai", "batches", "submit", src, "--endpoint", "/v1/embeddings",
                           "--wait", "--out", out, "--metadata", "from=cli"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(x["custom_id"] for x in lines) == ["item-0", "item-1", "item-2"]
    assert "completed" in done.stdout


def test_gpu_worker_work_drains_the_jobs_queue_and_exits_0_on_sigterm(tmp_path):
    data = tmp_path / "data"
    port = free_port()
    log = open(tmp_path / "dev.log", "w")
    dev = subprocess.Popen([ROOT / "target/debug/tenantai", "dev", "--data-dir", data, "--port", str(port),
                            "--model-dir", MODEL_DIR, "--no-chat", "--workers", "0"], stdout=log, stderr=subprocess.STDOUT)
    worker = None
    try:
        wait_port(port, dev, "tenantai dev")
        base = f"http://127.0.0.1:{port}"
        creds = json.loads((data / "credentials.json").read_text())
        c = client(creds["api_key"], base)
        f = c.files.create(file=("w.jsonl", io.BytesIO(jsonl(embed_lines([f"line {i}" for i in range(6)])))), purpose="batch")
        b = c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
        time.sleep(1)
        assert c.batches.retrieve(b.id).status == "validating", "no worker runs in this tenantai dev"
        wport = free_port()
        worker = subprocess.Popen([ROOT / "target/debug/gpu-worker", "work", "--data-dir", data, "--model", MODEL_DIR,
                                   "--host", "127.0.0.1", "--port", str(wport)],
                                  env=dict(os.environ, TENANTAI_BATCH_WAIT_SECS="1", TENANTAI_BATCH_CHUNK_LINES="2"),
                                  stdout=open(tmp_path / "worker.log", "w"), stderr=subprocess.STDOUT)
        wait_port(wport, worker, "gpu-worker work")
        assert httpx.get(f"http://127.0.0.1:{wport}/health").status_code == 200
        done = wait_done(c, b.id)
        assert done.status == "completed" and done.request_counts.completed == 6
        inputs = [line for line in httpx.get(f"http://127.0.0.1:{wport}/metrics").text.splitlines()
                  if line.startswith("tenantai_worker_inputs_total")]
        assert inputs and int(float(inputs[0].split()[-1])) >= 6, "the lines ran on the worker's own engine"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        for p in (worker, dev):
            if p and p.poll() is None:
                p.send_signal(signal.SIGINT)
                p.wait(timeout=60)

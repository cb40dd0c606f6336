"""Benchmark (not a test): the same embeddings requests through the sync API
(16 clients at once) and as one batch (upload, create, wait until completed),
on a running `tenantai dev`; prints requests per second of both and their ratio.

usage: bench-batches.py BASE_URL API_KEY [LINES]
"""

import concurrent.futures
import io
import json
import random
import sys
import time

import httpx
import openai

WORDS = ("tenant batch queue worker token model vector cache budget alert invoice "
         "usage stream chunk finalize upload output error window retry").split()


def texts(n, rng):
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 24))) + f" #{i}" for i in range(n)]


def sync_rate(base, key, items, clients=16):
    http = httpx.Client(base_url=f"{base}/v1", headers={"authorization": f"Bearer {key}",
                                                          "cache-control": "no-cache, no-store"}, timeout=120)

    def one(text):
        r = http.post("/embeddings", json={"model": "all-MiniLM-L6-v2", "input": text})
        r.raise_for_status()

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, items))
    return len(items) / (time.perf_counter() - started)


def batch_rate(base, key, items):
    c = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    lines = "\n".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings",
                                  "body": {"model": "all-MiniLM-L6-v2", "input": t}}) for i, t in enumerate(items))
    started = time.perf_counter()
    f = c.files.create(file=("bench.jsonl", io.BytesIO(lines.encode())), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    while b.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.05)
        b = c.batches.retrieve(b.id)
    elapsed = time.perf_counter() - started
    assert b.status == "completed" and b.request_counts.completed == len(items), b
    return len(items) / elapsed, elapsed


def main():
    base, key = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    rng = random.Random(7)
    sync = sync_rate(base, key, texts(n, rng))
    batch, elapsed = batch_rate(base, key, texts(n, rng))
    print(f"sync API, 16 clients: {sync:8.1f} requests/s")
    print(f"one batch of {n} lines: {batch:8.1f} lines/s ({elapsed:.1f} s from upload to completed)")
    print(f"batch / sync: {batch / sync:.2f}x")


if __name__ == "__main__":
    main()

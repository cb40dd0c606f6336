"""Streaming chat load for scripts/bench-load.sh: N concurrent streams, each sending
chat completions (`stream: true`) back to back for a fixed time, over plain asyncio
sockets (HTTP/1.1, one connection per request, no client library in the timing).

Per request it records the time to first token (request written -> first SSE event
carrying delta content), the gaps between content events (inter-token latency), and
the gateway's own overhead header where it sends one on a stream (LiteLLM's
`x-litellm-overhead-duration-ms`).
Prints one line: RESULT key=value ... with percentiles in milliseconds.

Usage: stream_load.py URL KEY MODEL STREAMS SECONDS MAX_TOKENS
"""

import asyncio
import itertools
import json
import os
import sys
import time
from urllib.parse import urlparse

OVERHEAD_HEADER = b"x-litellm-overhead-duration-ms"
COUNTER = itertools.count()
# Part of every prompt: no run repeats another's (a gateway's cache would answer it).
RUN = os.urandom(4).hex()


def percentile(values, pct):
    if not values:
        return -1.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


async def read_chunked(reader):
    """Yields the body's chunks as they arrive (chunked transfer coding)."""
    while True:
        size_line = await reader.readline()
        if not size_line:
            return
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            await reader.readline()
            return
        data = await reader.readexactly(size)
        await reader.readexactly(2)
        yield data


async def one_request(host, port, path, key, model, max_tokens):
    n = next(COUNTER)
    # A new prompt each time: no gateway's cache can answer it.
    body = json.dumps({
        "model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": f"Request {RUN}-{n}: name three colours and say why."}],
    }).encode()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"{auth}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head + body)
        await writer.drain()
        sent = time.perf_counter()
        status = int((await reader.readline()).split()[1])
        chunked, overhead = False, None
        while True:
            line = (await reader.readline()).lower()
            if line in (b"\r\n", b""):
                break
            if line.startswith(b"transfer-encoding:") and b"chunked" in line:
                chunked = True
            if line.startswith(OVERHEAD_HEADER + b":"):
                overhead = float(line.split(b":", 1)[1])
        if status != 200:
            return None
        chunks = read_chunked(reader) if chunked else stream_plain(reader)
        got = await timings(chunks, sent)
        return None if got is None else (*got, overhead)
    finally:
        writer.close()


async def stream_plain(reader):
    while True:
        data = await reader.read(65536)
        if not data:
            return
        yield data


async def timings(chunks, sent):
    """(time to first token, [inter-token gaps]) from an SSE body, in ms."""
    buffer, stamps = b"", []
    async for data in chunks:
        now = time.perf_counter()
        buffer += data
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            if not event.startswith(b"data: ") or event == b"data: [DONE]":
                continue
            choices = json.loads(event[6:]).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                stamps.append(now)
    if not stamps:
        return None
    gaps = [(b - a) * 1000 for a, b in zip(stamps, stamps[1:])]
    return (stamps[0] - sent) * 1000, gaps


async def stream_loop(target, deadline, results):
    while time.perf_counter() < deadline:
        try:
            got = await asyncio.wait_for(one_request(*target), timeout=120)
        except (OSError, asyncio.TimeoutError, ValueError, IndexError):
            got = None
        if got is None:
            results["errors"] += 1
        else:
            results["ttft"].append(got[0])
            results["itl"].extend(got[1])
            if got[2] is not None:
                results["hdr"].append(got[2])


async def main():
    url, key, model, streams, seconds, max_tokens = sys.argv[1:7]
    u = urlparse(url)
    target = (u.hostname, u.port, f"{u.path.rstrip('/')}/v1/chat/completions", key, model, int(max_tokens))
    results = {"ttft": [], "itl": [], "hdr": [], "errors": 0}
    deadline = time.perf_counter() + float(seconds)
    await asyncio.gather(*(stream_loop(target, deadline, results) for _ in range(int(streams))))
    ttft, itl, hdr = results["ttft"], results["itl"], results["hdr"]
    fields = {"requests": len(ttft), "errors": results["errors"], "hdr_n": len(hdr)}
    for name, values in (("ttft", ttft), ("itl", itl), ("hdr", hdr)):
        for pct in (50, 90, 99):
            fields[f"{name}_p{pct}_ms"] = f"{percentile(values, pct):.3f}"
    print("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()))


if __name__ == "__main__":
    asyncio.run(main())

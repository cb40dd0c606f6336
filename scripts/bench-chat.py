"""Chat load generator: N concurrent streams against an OpenAI-compatible server.

Each stream sends short prompts (temperature 0, max_tokens as given) with
stream=True and include_usage, back to back, for the run's duration, and records
the time to the first content chunk and the gaps between content chunks. Prints one
JSON line: aggregate completion tokens/s (from the servers' own usage counts), time
to first token and inter-token latency percentiles.

usage: python bench-chat.py BASE_URL MODEL STREAMS SECONDS MAX_TOKENS [API_KEY]
"""

import asyncio
import json
import statistics
import sys
import time

import openai

PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a refrigerator works, step by step.",
    "Describe a walk through a busy market in a city you imagine, with many details.",
    "Write a detailed guide to planting a vegetable garden in spring.",
    "Tell a long story about two friends who build a boat together.",
    "Explain the history of writing, from clay tablets to computers, in detail.",
    "Describe the life of a honeybee colony through one whole year.",
    "Write a long letter from a traveller describing the mountains she crossed.",
]


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


async def stream_once(client, model, prompt, max_tokens, stats):
    start = time.perf_counter()
    last = None
    tokens = 0
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        now = time.perf_counter()
        if chunk.choices and chunk.choices[0].delta.content:
            if last is None:
                stats["ttft"].append(now - start)
            else:
                stats["itl"].append(now - last)
            last = now
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    stats["tokens"] += tokens
    stats["requests"] += 1


async def worker(i, client, model, deadline, max_tokens, stats):
    n = i
    while time.perf_counter() < deadline:
        await stream_once(client, model, PROMPTS[n % len(PROMPTS)], max_tokens, stats)
        n += 1


async def main(base, model, streams, seconds, max_tokens, key):
    client = openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0, timeout=600)
    # Warm-up: one short request.
    await stream_once(client, model, PROMPTS[0], 8, {"ttft": [], "itl": [], "tokens": 0, "requests": 0})
    stats = {"ttft": [], "itl": [], "tokens": 0, "requests": 0}
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(worker(i, client, model, deadline, max_tokens, stats) for i in range(streams)))
    elapsed = time.perf_counter() - started
    ms = lambda v: None if v is None else round(v * 1000, 2)
    print(json.dumps({
        "streams": streams,
        "seconds": round(elapsed, 2),
        "requests": stats["requests"],
        "completion_tokens": stats["tokens"],
        "tokens_per_s": round(stats["tokens"] / elapsed, 1),
        "ttft_p50_ms": ms(pct(stats["ttft"], 50)),
        "ttft_p99_ms": ms(pct(stats["ttft"], 99)),
        "itl_p50_ms": ms(pct(stats["itl"], 50)),
        "itl_p99_ms": ms(pct(stats["itl"], 99)),
        "itl_mean_ms": ms(statistics.fmean(stats["itl"]) if stats["itl"] else None),
    }))


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(a[0], a[1], int(a[2]), float(a[3]), int(a[4]), a[5] if len(a) > 5 else "none"))

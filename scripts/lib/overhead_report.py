"""Reads tenantai's log lines ("served", from the pipeline) on stdin and prints its
own share of the streamed requests' time to first token (overhead_ms): p50, p99,
and where it went at p99 and in the slowest requests, from the lines' marks.

Phases, in ms: limit (the rate limiter), route (the registry), budget (the hard cap's
reservation), serve (cache lookup, breaker, the call's set-up: what of the time
until the backend's first event was not the backend's), after (from the backend's
first event in hand to the first bytes leaving for the client).

usage: overhead_report.py < tenantai.log   (one line of key=value on stdout; the slowest
       requests' phases on stderr)
"""

import re
import sys

FIELDS = ("overhead_ms", "limited_ms", "routed_ms", "reserved_ms", "answered_ms", "first_sent_ms")


def phases(f):
    backend_first = f["first_sent_ms"] - f["overhead_ms"]
    return {
        "limit": f["limited_ms"],
        "route": f["routed_ms"] - f["limited_ms"],
        "budget": f["reserved_ms"] - f["routed_ms"],
        "serve": f["answered_ms"] - f["reserved_ms"] - backend_first,
        "after": f["first_sent_ms"] - f["answered_ms"],
    }


def main():
    rows = []
    for line in sys.stdin:
        if " served" not in line or "completion_tokens=0 " in line:
            continue
        f = {}
        for k in FIELDS:
            m = re.search(rf"\b{k}=([0-9.e-]+)", line)
            if m:
                f[k] = float(m.group(1))
        if "overhead_ms" in f:
            rows.append(f)
    v = sorted(r["overhead_ms"] for r in rows)
    pct = lambda xs, p: xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] if xs else -1
    out = [f"self_n={len(v)}", f"self_p50_ms={pct(v, 50):.3f}", f"self_p99_ms={pct(v, 99):.3f}"]
    marked = [phases(r) for r in rows if all(k in r for k in FIELDS)]
    for name in ("limit", "route", "budget", "serve", "after"):
        out.append(f"{name}_p99_ms={pct(sorted(p[name] for p in marked), 99):.3f}")
    print(" ".join(out))
    slow = sorted(marked, key=lambda p: -sum(p.values()))[:3]
    for p in slow:  # to the terminal, not into the results
        print("      slowest: " + " ".join(f"{k}={p[k]:.3f}" for k in p), file=sys.stderr)


if __name__ == "__main__":
    main()

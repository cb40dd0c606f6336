"""The tables scripts/bench-load.sh prints from its results file: one line per run,
`MODE:NAME RESULT key=value ...` (MODE: shared or pinned cores)."""

import sys


def load(path):
    rows = {}
    for line in open(path):
        name, _, *fields = line.split()
        mode, run = name.split(":", 1)
        rows.setdefault(mode, {})[run] = {k: float(v) for k, v in (f.split("=") for f in fields)}
    return rows


def overhead(rows, name, pct):
    r = rows[name]
    # The server's own header, where (nearly) every answer carries it.
    if r["ov_n"] >= 0.9 * r["requests"] and r[f"ov_{pct}_ms"] >= 0:
        return r[f"ov_{pct}_ms"], "header"
    base = {"litellm-miss": "worker-miss"}.get(name)
    if base:  # latency above the worker's own at the same rate
        return max(r[f"{pct}_ms"] - rows[base][f"{pct}_ms"], 0.0), "latency - worker"
    return r[f"{pct}_ms"], "latency (hit)"


def embeddings(mode, rows):
    if "tenantai-miss" not in rows:
        return
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    print(f"\n[{mode}] embeddings")
    print(f"{'run':<18} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'overhead p50':>13} {'overhead p99':>13}  source")
    for name, r in rows.items():
        if name.startswith("warm") or name.startswith("chat-"):
            continue
        if name == "worker-miss":
            o50 = o99 = src = None
        else:
            (o50, src), (o99, _) = overhead(rows, name, "p50"), overhead(rows, name, "p99")
        print(f"{name:<18} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['non2xx'] + r['errors']:>8.0f} "
              f"{fmt(o50):>13} {fmt(o99):>13}  {src or ''}")
    for kind in ("miss", "hit", "hit-max"):
        t, l = overhead(rows, f"tenantai-{kind}", "p99")[0], overhead(rows, f"litellm-{kind}", "p99")[0]
        print(f"overhead p99, {kind:<8}: tenantai {t:.3f} ms, LiteLLM {l:.3f} ms, ratio {l / max(t, 1e-3):.0f}x")
    t, l = rows["tenantai-hit-max"]["rps"], rows["litellm-hit-max"]["rps"]
    print(f"cache-hit throughput: tenantai {t:.0f} req/s, LiteLLM {l:.0f} req/s, ratio {t / max(l, 1e-9):.1f}x")


def own(r, pct):
    """A gateway's own account of its share of the time to first token: tenantai's
    overhead_ms (its log), LiteLLM's overhead header on the stream."""
    for prefix in ("self", "hdr"):
        if r.get(f"{prefix}_n", 0) > 0 and r.get(f"{prefix}_{pct}_ms", -1) >= 0:
            return r[f"{prefix}_{pct}_ms"]
    return None


def chat(mode, rows):
    streams = sorted({int(n.rsplit("-", 1)[1]) for n in rows if n.startswith("chat-")})
    if not streams:
        return
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    print(f"\n[{mode}] chat (ms; 'added' = through the gateway minus straight to the worker, "
          "'own' = the gateway's own account of its share of the time to first token)")
    print(f"{'streams':>7} {'target':<9} {'answers':>7} {'err':>4} {'ttft p50':>9} {'ttft p99':>9} {'itl p50':>8}"
          f" {'itl p99':>8} {'added ttft p50':>15} {'added itl p50':>14} {'own p50':>8} {'own p99':>8}")
    for n in streams:
        w = rows[f"chat-worker-{n}"]
        for target in ("worker", "tenantai", "litellm"):
            r = rows[f"chat-{target}-{n}"]
            added = lambda key: None if target == "worker" else r[key] - w[key]
            print(f"{n:>7} {target:<9} {r['requests']:>7.0f} {r['errors']:>4.0f} {r['ttft_p50_ms']:>9.2f}"
                  f" {r['ttft_p99_ms']:>9.2f} {r['itl_p50_ms']:>8.2f} {r['itl_p99_ms']:>8.2f}"
                  f" {fmt(added('ttft_p50_ms')):>15} {fmt(added('itl_p50_ms')):>14}"
                  f" {fmt(own(r, 'p50')):>8} {fmt(own(r, 'p99')):>8}")
        t, l = own(rows[f"chat-tenantai-{n}"], "p99"), own(rows[f"chat-litellm-{n}"], "p99")
        if t is not None and l is not None:
            print(f"{'':>7} own ttft overhead p99: tenantai {t:.3f} ms, LiteLLM {l:.3f} ms, ratio {l / max(t, 1e-3):.1f}x")


rows = load(sys.argv[1])
for mode, by_run in rows.items():
    embeddings(mode, by_run)
    chat(mode, by_run)

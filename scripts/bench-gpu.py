"""GPU benchmark (not a test): the candle engine of gpu-worker on CUDA against
sentence-transformers (PyTorch) on the same GPU, for batch sizes 32 to 1024, short
and mixed-length inputs. candle runs f32; sentence-transformers runs f32, and fp16
and bf16 as well, which candle's BERT cannot run (its additive attention mask,
(1 - mask) * finfo(f32).min, rounds to -inf in both and turns every row into NaN).

Prints sentences/s and tokens/s for both and their ratio, then where candle's time
goes: forward passes, padding, tokenisation, the model alone against the whole
engine, host time spent enqueuing kernels, and the achieved TFLOP/s. Full results go
to BENCH_OUT (a JSON file) when set. Run it through scripts/gpu-check.sh.

usage: bench-gpu.py MODEL_DIR CANDLE_BENCH_BINARY
       bench-gpu.py --ncu-workload long_b256|short_b32   (prints a workload file)
       bench-gpu.py --ncu-summary NCU_CSV NAME            (kernel time by kernel)
env:   BENCH_BATCH_SIZES (default 32,128,512,1024), BENCH_SHORT (4096 sentences),
       BENCH_MIXED (2048 texts), BENCH_OUT, BENCH_DEVICE (cuda; cpu for a dry run)
"""

import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("bench_cpu", os.path.join(HERE, "bench-embeddings.py"))
bench_cpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_cpu)

BATCH_SIZES = [int(b) for b in os.environ.get("BENCH_BATCH_SIZES", "32,128,512,1024").split(",")]
N_SHORT = int(os.environ.get("BENCH_SHORT", "4096"))
N_MIXED = int(os.environ.get("BENCH_MIXED", "2048"))
ROUNDS = {"short": 5, "mixed": 3}
DEVICE = os.environ.get("BENCH_DEVICE", "cuda")
HIDDEN, LAYERS = 384, 6


def flops_per_token(length):
    """Matmul FLOPs of one token through MiniLM-L6 (QKV, output, 2 MLP layers, and
    attention scores and mixing over `length` positions)."""
    return LAYERS * (2 * 12 * HIDDEN * HIDDEN + 2 * 2 * length * HIDDEN)


def useful_flops(lengths):
    return sum(flops_per_token(n) * n for n in lengths)


def run_candle(binary, model_dir, workloads, extra=(), tf32=False):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(workloads, f)
        path = f.name
    env = dict(os.environ, TENANTAI_DEVICE="cuda:0" if DEVICE == "cuda" else DEVICE,
               TENANTAI_TF32=str(tf32).lower())
    proc = subprocess.run(
        [binary, model_dir, path, *extra], env=env, capture_output=True, text=True, timeout=400
    )
    os.unlink(path)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"candle benchmark failed: exit {proc.returncode}")
    return json.loads(proc.stdout)


def sync(torch):
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def st_rate(torch, model, texts, batch_size, rounds):
    model.encode(texts[: 2 * batch_size], batch_size=batch_size, normalize_embeddings=True)
    sync(torch)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        # As tensors, copied to the host once at the end (numpy has no bfloat16).
        model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_tensor=True).float().cpu()
        sync(torch)
        times.append(time.perf_counter() - start)
    return len(texts) / statistics.median(times)


def save(results):
    """Writes what is measured so far to BENCH_OUT (a run cut short keeps it)."""
    out = os.environ.get("BENCH_OUT")
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)


def main():
    model_dir, candle_bin = sys.argv[1], sys.argv[2]
    os.environ["HF_HUB_OFFLINE"] = "1"  # never a model hub
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model_dir, device=DEVICE)
    rng = random.Random(20261125)
    short = [t for _ in range(N_SHORT // 64) for t in bench_cpu.short_workload(rng)][:N_SHORT]
    mixed = [t for _ in range(N_MIXED // 128) for t in bench_cpu.mixed_workload(rng, st.tokenizer)][:N_MIXED]
    texts = {"short": short, "mixed": mixed}
    lengths = {k: [len(ids) for ids in st.tokenizer(v)["input_ids"]] for k, v in texts.items()}
    tokens = {k: sum(v) for k, v in lengths.items()}

    workloads = {}
    for kind in ("short", "mixed"):
        for b in BATCH_SIZES:
            workloads[f"{kind}_b{b:04}"] = {
                "rounds": ROUNDS[kind],
                "texts": texts[kind],
                "max_batch_size": b,
                "max_batch_tokens": b * 256,
            }
    # How the planner's pass cost trades padding for passes on mixed lengths.
    sweep = {}
    b = max(BATCH_SIZES)
    for overhead in (48, 65536):
        sweep[f"mixed_b{b:04}_overhead{overhead}"] = dict(
            workloads[f"mixed_b{b:04}"], pass_overhead_tokens=overhead
        )

    results = {"gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else DEVICE, "torch": torch.__version__, "candle": {}, "st": {}}
    print(f"GPU {results['gpu']}, torch {torch.__version__}, short: {N_SHORT} x ~{tokens['short'] / N_SHORT:.0f} tokens, "
          f"mixed: {N_MIXED} x 3..250 tokens (mean {tokens['mixed'] / N_MIXED:.0f})", flush=True)
    t = time.perf_counter()
    results["candle"] = run_candle(candle_bin, model_dir, dict(workloads, **sweep), ["--model-only"])
    print(f"candle f32: {time.perf_counter() - t:.0f} s", flush=True)
    save(results)
    t = time.perf_counter()
    results["candle_tf32"] = run_candle(candle_bin, model_dir, workloads, tf32=True)
    print(f"candle tf32: {time.perf_counter() - t:.0f} s", flush=True)
    save(results)
    # Host time enqueuing kernels (candle's spans), one short and one long workload.
    profile_set = {k: dict(workloads[k], rounds=2) for k in (f"short_b{min(BATCH_SIZES):04}", f"mixed_b{b:04}")}
    results["candle_profile"] = run_candle(candle_bin, model_dir, profile_set, ["--profile"])

    t = time.perf_counter()
    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    for name, dtype in dtypes.items():
        st.to(dtype)
        results["st"][name] = {}
        for key, w in workloads.items():
            results["st"][name][key] = st_rate(torch, st, w["texts"], w["max_batch_size"], w["rounds"])
        print(f"sentence-transformers {name}: {time.perf_counter() - t:.0f} s", flush=True)
        save(results)
    st.to(torch.float32)

    print()
    print(f"{'workload':<12} {'candle s/s':>11} {'s-t f32':>8} {'ratio':>6} {'s-t fp16':>9} {'s-t bf16':>9} "
          f"{'vs best':>7} {'tf32 s/s':>9} {'vs best':>7} {'candle tok/s':>13}  candle f32: passes, padding, "
          f"model-only share, TFLOP/s")
    for key, w in workloads.items():
        kind = key.split("_")[0]
        c = results["candle"][key]
        st_f32, st_fp16, st_bf16 = (results["st"][p][key] for p in ("f32", "fp16", "bf16"))
        cs = c["sentences_per_second"]
        tok = tokens[kind] / len(w["texts"])
        tflops = useful_flops(lengths[kind]) / c["seconds_per_round"] / 1e12
        model_share = c["model_only_seconds_per_round"] / c["seconds_per_round"]
        tf = results["candle_tf32"][key]["sentences_per_second"]
        best = max(st_f32, st_fp16, st_bf16)
        print(f"{key:<12} {cs:>11.0f} {st_f32:>8.0f} {cs / st_f32:>5.2f}x {st_fp16:>9.0f} {st_bf16:>9.0f} "
              f"{cs / best:>6.2f}x {tf:>9.0f} {tf / best:>6.2f}x {cs * tok:>13.0f}  {c['forward_passes_per_round']:.0f}, "
              f"{100 * c['padding_share']:.0f}%, {100 * model_share:.0f}%, {tflops:.1f}")
    print()
    for key in sweep:
        r = results["candle"][key]
        print(f"planner sweep {key}: {r['sentences_per_second']:.0f} s/s, "
              f"{r['forward_passes_per_round']:.0f} passes, padding {100 * r['padding_share']:.0f}% "
              f"(default {results['candle'][key.rsplit('_', 1)[0]]['sentences_per_second']:.0f} s/s)")
    for key, p in results["candle_profile"].items():
        spans = p.get("span_seconds_per_round", {})
        host = sum(spans.values())
        top = ", ".join(f"{k} {1000 * v:.1f}" for k, v in sorted(spans.items(), key=lambda kv: -kv[1])[:5])
        print(f"profile {key} f32: wall {1000 * p['seconds_per_round']:.1f} ms/round, host time in candle ops "
              f"{1000 * host:.1f} ms ({100 * host / p['seconds_per_round']:.0f}%): {top}; "
              f"tokenize {1000 * p['tokenize_seconds_per_round']:.1f} ms")


def ncu_workload(name):
    """The one-pass workloads profiled with Nsight Compute."""
    workloads = {
        "long_b256": {"rounds": 1, "texts": ["word " * 248] * 256, "max_batch_size": 256,
                      "max_batch_tokens": 65536},
        "short_b32": {"rounds": 1, "texts": [f"a short sentence number {i} about the weather" for i in range(1024)],
                      "max_batch_size": 32, "max_batch_tokens": 8192},
    }
    print(json.dumps({name: workloads[name]}))


def ncu_summary(path, name):
    """Sums Nsight Compute's gpu__time_duration (ns) by kernel name."""
    import collections
    import csv
    import re

    rows = [r for r in csv.reader(open(path)) if len(r) > 10]
    head, rows = rows[0], rows[1:]
    kernel_col, value_col = head.index("Kernel Name"), head.index("Metric Value")
    total, by = 0.0, collections.Counter()
    for r in rows:
        ns = float(r[value_col].replace(",", ""))
        by[re.sub(r"[<(].*", "", r[kernel_col]).strip()] += ns
        total += ns
    print(f"{name}: {len(rows)} kernels, {total / 1e6:.1f} ms of GPU time (warm-up pass included); by kernel: "
          + ", ".join(f"{k[:48]} {100 * v / total:.0f}%" for k, v in by.most_common(12)))


if __name__ == "__main__":
    if sys.argv[1] == "--ncu-workload":
        ncu_workload(sys.argv[2])
    elif sys.argv[1] == "--ncu-summary":
        ncu_summary(sys.argv[2], sys.argv[3])
    else:
        main()

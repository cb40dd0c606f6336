"""Embeds the same workloads with the engine (gpu-worker) at each precision and with
its peer of the same tier, and prints sentences per second for both, their ratio,
and the quality of both against the f32 PyTorch reference:

  f32   engine  vs  sentence-transformers, PyTorch f32
  bf16  engine  vs  sentence-transformers under torch.autocast("cpu", bfloat16)
  int8  engine  vs  sentence-transformers' ONNX backend, its int8 dynamic-quantized
                    export (onnxruntime; run in its own venv by bench-embeddings-onnx.py)

Quality per variant: min and mean cosine per item against the f32 PyTorch vectors,
and top-10 retrieval overlap (each workload text as a query over the others: the
share of its 10 nearest neighbours under the reference that the variant also ranks
in its top 10). Run through scripts/bench-embeddings.sh, which prepares the venvs,
the model and the engine's build.

usage: bench-embeddings.py MODEL_DIR ENGINE_BENCH_BINARY ONNX_PYTHON [--profile]
           [--only f32,bf16,int8]
"""

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
# Single-token words in the BERT uncased vocabulary.
WORDS = (
    "the of and to in is was for on are with as at by from this that it be have an or not "
    "one all their has more new can time about which when would there two what some other "
    "people first into year could after most also made many before through back years where "
    "much your way well down should because each just those how work life world over city "
    "model data tenant service music river house water light night market price health "
    "school story family power country money system public group small large early local"
).split()
PEERS = {
    "f32": "PyTorch f32",
    "bf16": "PyTorch bf16 autocast",
    "int8": "ONNX int8 (onnxruntime)",
}


def short_workload(rng, n=64):
    """n sentences of about 12 words."""
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(10, 14))]
        out.append(" ".join(words).capitalize() + ".")
    return out


def mixed_workload(rng, tokenizer, n=128, lo=3, hi=250):
    """n texts whose token counts (special tokens included) spread evenly from lo to hi."""
    out = []
    for i in range(n):
        target = lo + round(i * (hi - lo) / (n - 1))
        words = [rng.choice(WORDS) for _ in range(max(1, target - 2))]
        text = " ".join(words)
        assert len(tokenizer(text)["input_ids"]) == target, (target, text)
        out.append(text)
    rng.shuffle(out)
    return out


def bench_st(encode, texts, rounds):
    """Median sentences/s of `encode(texts)` over rounds (after a warm-up), and the
    last vectors."""
    vectors = encode(texts)
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        vectors = encode(texts)
        rates.append(len(texts) / (time.perf_counter() - start))
    return statistics.median(rates), np.asarray(vectors, dtype=np.float64)


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def quality(reference, vectors, k=10):
    """(min cosine, mean cosine, mean top-k overlap) of `vectors` against `reference`."""
    ref, got = unit(reference), unit(vectors)
    cos = np.sum(ref * got, axis=1)

    def neighbours(v):
        sim = v @ v.T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1)[:, :k]

    a, b = neighbours(ref), neighbours(got)
    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)])
    return float(cos.min()), float(cos.mean()), float(overlap)


def run_engine(binary, model_dir, workloads_path, precision, profile):
    env = dict(os.environ)
    # One model thread per core, each with single-threaded matmuls (what
    # `gpu-worker serve` does on a CPU by default), unless the caller overrides them.
    env.setdefault("TENANTAI_MODEL_THREADS", str(THREADS))
    env["TENANTAI_PRECISION"] = precision
    cmd = [binary, model_dir, workloads_path, "--vectors"] + (["--profile"] if profile else [])
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=900)
    return json.loads(out.stdout)


def run_onnx(python, model_dir, workloads_path):
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = [python, os.path.join(here, "bench-embeddings-onnx.py"), model_dir, workloads_path]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt_quality(q):
    return f"cos min {q[0]:.5f} mean {q[1]:.5f}, top-10 {q[2]:.3f}"


def main():
    model_dir, engine_bin, onnx_python = sys.argv[1], sys.argv[2], sys.argv[3]
    profile = "--profile" in sys.argv
    only = ["f32", "bf16", "int8"]
    if "--only" in sys.argv:
        only = sys.argv[sys.argv.index("--only") + 1].split(",")
    os.environ["HF_HUB_OFFLINE"] = "1"  # never a model hub
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(THREADS)
    st = SentenceTransformer(model_dir, device="cpu")
    rng = random.Random(20261123)
    workloads = {
        "1_short_64x12words": {"rounds": 20, "texts": short_workload(rng)},
        "2_mixed_3to250tokens": {"rounds": 3, "texts": mixed_workload(rng, st.tokenizer)},
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(workloads, f)
        path = f.name

    def encode_f32(texts):
        return st.encode(texts, batch_size=64, normalize_embeddings=True)

    def encode_bf16(texts):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return st.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=False,
                             convert_to_tensor=True).float().numpy()

    # The f32 PyTorch reference (and the f32 peer's speed).
    peers, reference = {}, {}
    for name, w in workloads.items():
        rate, vecs = bench_st(encode_f32, w["texts"], w["rounds"])
        peers[("f32", name)] = (rate, vecs)
        reference[name] = vecs
    if "bf16" in only:
        for name, w in workloads.items():
            peers[("bf16", name)] = bench_st(encode_bf16, w["texts"], w["rounds"])
    if "int8" in only:
        onnx = run_onnx(onnx_python, model_dir, path)
        for name in workloads:
            peers[("int8", name)] = (onnx[name]["sentences_per_second"], np.asarray(onnx[name]["vectors"]))
        print(f"int8 peer: {onnx['about']}")

    engine = {p: run_engine(engine_bin, model_dir, path, p, profile) for p in only}
    os.unlink(path)
    first = next(iter(engine[only[0]].values()))
    print(
        f"torch {torch.__version__}: torch.set_num_threads({THREADS}); engine: "
        f"{first['model_threads']} model thread(s) x {first['matmul_threads']} matmul thread(s), "
        f"dense products on {first.get('matmul', '?')}"
    )
    print(f"{'variant':<6} {'workload':<22} {'n':>4} {'engine s/s':>10} {'peer s/s':>9} {'ratio':>6}  "
          f"peer / quality vs PyTorch f32 (engine | peer)")
    for precision in only:
        for name, w in workloads.items():
            c = engine[precision][name]
            peer_rate, peer_vecs = peers[(precision, name)]
            ours = quality(reference[name], c["vectors"])
            theirs = quality(reference[name], peer_vecs)
            print(
                f"{precision:<6} {name:<22} {len(w['texts']):>4} {c['sentences_per_second']:>10.1f} "
                f"{peer_rate:>9.1f} {c['sentences_per_second'] / peer_rate:>5.2f}x  {PEERS[precision]}"
            )
            print(f"{'':<6} engine: {fmt_quality(ours)} | peer: {fmt_quality(theirs)}")
            print(
                f"{'':<6} engine: passes/round {c['forward_passes_per_round']:.0f}, tokens/round "
                f"{c['tokens_per_round']}, tokenize {1000 * c['tokenize_seconds_per_round']:.1f} ms/round"
            )
            if profile:
                spans = c["span_seconds_per_round"]
                # Span times add up over the model threads: shares are of thread time.
                total = c["seconds_per_round"] * c["model_threads"]
                parts = ", ".join(
                    f"{k} {1000 * v:.1f} ms ({100 * v / total:.0f}%)"
                    for k, v in sorted(spans.items(), key=lambda kv: -kv[1])
                    if v > 0.0005
                )
                print(f"{'':<6} profile ({1000 * c['seconds_per_round']:.0f} ms wall x "
                      f"{c['model_threads']} threads): {parts}")


if __name__ == "__main__":
    main()

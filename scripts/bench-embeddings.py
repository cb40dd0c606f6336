"""Embeds the same workloads with the candle engine (gpu-worker) and with
sentence-transformers (PyTorch on CPU), and prints sentences per second for both
and their ratio. Run through scripts/bench-embeddings.sh, which prepares the venv,
the model and the release build.

usage: bench-embeddings.py MODEL_DIR CANDLE_BENCH_BINARY [--profile]
"""

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

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


def bench_sentence_transformers(model, texts, rounds, batch_size=64):
    model.encode(texts, batch_size=batch_size, normalize_embeddings=True)  # warm-up
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        model.encode(texts, batch_size=batch_size, normalize_embeddings=True)
        rates.append(len(texts) / (time.perf_counter() - start))
    return statistics.median(rates)


def main():
    model_dir, candle_bin = sys.argv[1], sys.argv[2]
    profile = "--profile" in sys.argv
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
    # candle: one model thread per core, each with single-threaded matmuls (what
    # `gpu-worker serve` does on a CPU by default), unless the caller overrides them.
    env = dict(os.environ)
    env.setdefault("TENANTAI_MODEL_THREADS", str(THREADS))
    cmd = [candle_bin, model_dir, path] + (["--profile"] if profile else [])
    candle = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
    os.unlink(path)

    first = next(iter(candle.values()))
    print(
        f"torch {torch.__version__}: torch.set_num_threads({THREADS}); candle: "
        f"{first['model_threads']} model thread(s) x {first['matmul_threads']} matmul thread(s)"
    )
    print(f"{'workload':<24} {'n':>4} {'candle s/s':>11} {'s-t s/s':>9} {'ratio':>6}  candle detail")
    for name, w in workloads.items():
        st_rate = bench_sentence_transformers(st, w["texts"], w["rounds"])
        c = candle[name]
        detail = (
            f"passes/round {c['forward_passes_per_round']:.0f}, padding {100 * c['padding_share']:.0f}%, "
            f"tokens/round {c['tokens_per_round']}, tokenize {1000 * c['tokenize_seconds_per_round']:.1f} ms/round"
        )
        print(
            f"{name:<24} {len(w['texts']):>4} {c['sentences_per_second']:>11.1f} {st_rate:>9.1f} "
            f"{c['sentences_per_second'] / st_rate:>5.2f}x  {detail}"
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
            print(
                f"    profile, exclusive thread time per round ({1000 * c['seconds_per_round']:.0f} ms wall x "
                f"{c['model_threads']} threads; tokenizer {1000 * c['tokenize_seconds_per_round']:.1f} ms): {parts}"
            )


if __name__ == "__main__":
    main()

"""The int8 peer of scripts/bench-embeddings.py: sentence-transformers' ONNX backend
(onnxruntime on CPU, BENCH_THREADS intra-op threads) on its int8 dynamic-quantized
export of the model (export_dynamic_quantized_onnx_model, the avx512_vnni config),
made offline from the local model directory into a copy of it under .tools/ (once).
Prints one JSON line: per workload, sentences/s (median over its rounds, after a
warm-up) and the last round's vectors. Runs in its own venv (optimum's ONNX export
pins an older transformers than the PyTorch peers' venv).

usage: bench-embeddings-onnx.py MODEL_DIR WORKLOADS_JSON
"""

import json
import os
import shutil
import statistics
import sys
import time

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
QUANTIZED = "onnx/model_qint8_avx512_vnni.onnx"


def export(model_dir, out_dir):
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    if os.path.isfile(os.path.join(out_dir, QUANTIZED)):
        return
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(model_dir, out_dir)
    # No onnx/model.onnx yet: the ONNX backend exports the PyTorch weights (optimum).
    model = SentenceTransformer(out_dir, device="cpu", backend="onnx")
    model.save_pretrained(out_dir)
    export_dynamic_quantized_onnx_model(model, "avx512_vnni", out_dir)


def main():
    model_dir, workloads_path = sys.argv[1], sys.argv[2]
    os.environ["HF_HUB_OFFLINE"] = "1"  # never a model hub
    import onnxruntime as ort
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(THREADS)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_dir = os.path.join(root, ".tools", "bench-onnx-model")
    export(model_dir, out_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    model = SentenceTransformer(
        out_dir,
        device="cpu",
        backend="onnx",
        model_kwargs={"file_name": QUANTIZED, "provider": "CPUExecutionProvider", "session_options": options},
    )
    with open(workloads_path) as f:
        workloads = json.load(f)
    result = {"about": f"onnxruntime {ort.__version__}, {QUANTIZED}, {THREADS} intra-op threads"}
    for name, w in workloads.items():
        texts = w["texts"]

        def encode():
            return model.encode(texts, batch_size=64, normalize_embeddings=True)

        vectors = encode()  # warm-up
        rates = []
        for _ in range(w["rounds"]):
            start = time.perf_counter()
            vectors = encode()
            rates.append(len(texts) / (time.perf_counter() - start))
        result[name] = {"sentences_per_second": statistics.median(rates), "vectors": vectors.tolist()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()

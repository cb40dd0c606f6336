"""Records llama.cpp's reference behaviour on SmolLM2-135M-Instruct into a fixture.

Run by scripts/record-chat-reference.sh (which builds llama.cpp and installs its Python
binding, llama-cpp-python). For each conversation it records, from llama.cpp alone:

- the prompt text (the GGUF's own chat template rendered by llama-cpp-python's Jinja2
  formatter, as Hugging Face renders it) and its token ids (special tokens parsed);
- llama.cpp's greedy continuation, decoded one token at a time (up to MAX_NEW tokens or
  the end-of-turn token);
- teacher forcing along that continuation, in one batch: at every position the argmax
  and the gap between the top two logits;
- the full logits at the prompt's last position (little-endian f32, base64).

usage: python record-chat-reference.py MODEL.gguf OUT.json
"""

import base64
import hashlib
import json
import sys

import numpy as np
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

MAX_NEW = 64

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
        {"role": "user", "content": "Explain what an API key is."},
    ],
    [
        {"role": "user", "content": "Write a haiku about the sea."},
        {"role": "assistant", "content": "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide keeps its time."},
        {"role": "user", "content": "Now one about mountains."},
    ],
    [{"role": "user", "content": "List three prime numbers greater than 100, then add them: 101 + 103 + 107 = ?"}],
    [
        {"role": "system", "content": "You translate English to French."},
        {"role": "user", "content": "Good morning! How are you today? Café, naïve, résumé."},
    ],
    [{"role": "user", "content": "def add(a, b):\n    return a + b\n\nWhat does this Python function do?"}],
    [
        {"role": "user", "content": "Summarise in two sentences: Multi-tenant SaaS backends isolate each customer's data, meter usage per tenant, and enforce budgets and rate limits so that one noisy customer cannot starve the others. They also route each tenant to the model version it was promised."},
    ],
]


def top_two(row):
    order = np.argpartition(row, -2)[-2:]
    a, b = sorted(order, key=lambda i: row[i], reverse=True)
    return int(a), float(row[a] - row[b])


def main(model_path, out_path):
    llm = Llama(
        model_path=model_path,
        n_ctx=2048,
        n_batch=512,
        n_threads=2,
        logits_all=True,
        verbose=False,
    )
    meta = llm.metadata
    template = meta["tokenizer.chat_template"]
    vocab_tokens = {i: llm._model.token_get_text(i) for i in (llm.token_bos(), llm.token_eos())}
    formatter = Jinja2ChatFormatter(
        template=template,
        eos_token=vocab_tokens[llm.token_eos()],
        bos_token=vocab_tokens[llm.token_bos()],
        add_generation_prompt=True,
    )
    eos = llm.token_eos()
    out = []
    for messages in CONVERSATIONS:
        prompt = formatter(messages=messages).prompt
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

        # Greedy, one token at a time, as a server generates.
        llm.reset()
        llm.eval(ids)
        last_logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        greedy = []
        row = last_logits
        for _ in range(MAX_NEW):
            tok = int(np.argmax(row))
            greedy.append(tok)
            if tok == eos:
                break
            llm.eval([tok])
            row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)

        # Teacher forcing along the continuation, in one batch.
        llm.reset()
        llm.eval(ids + greedy[:-1])
        teacher = []
        for pos in range(len(ids) - 1, len(ids) - 1 + len(greedy)):
            argmax, gap = top_two(np.array(llm.scores[pos], dtype=np.float32))
            teacher.append({"argmax": argmax, "gap": round(gap, 5)})

        out.append(
            {
                "messages": messages,
                "prompt": prompt,
                "prompt_ids": ids,
                "greedy_ids": greedy,
                "greedy_text": llm.detokenize([t for t in greedy if t != eos]).decode("utf-8", "replace"),
                "teacher": teacher,
                "last_logits_f32_b64": base64.b64encode(last_logits.astype("<f4").tobytes()).decode(),
            }
        )
        print(f"{len(ids):4d} prompt ids, {len(greedy):3d} generated: {out[-1]['greedy_text'][:60]!r}")

    with open(model_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    import llama_cpp

    doc = {
        "about": "llama.cpp reference for SmolLM2-135M-Instruct (Q4_1 GGUF), recorded by scripts/record-chat-reference.sh",
        "model_sha256": digest,
        "llama_cpp_python": llama_cpp.__version__,
        "settings": {"n_threads": 2, "kv_cache": "f16 (llama.cpp default)", "max_new_tokens": MAX_NEW},
        "conversations": out,
    }
    with open(out_path, "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

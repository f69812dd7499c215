"""The held-out loss of a Hugging Face folder (what `autotp merge` writes), computed by transformers.

    .venv/bin/python scripts/hf_eval.py build/smollm2_sft/hf build/data/sft_demo.eval.tokens --seq 64 \
        [--expect 1.234 | --metrics build/smollm2_sft.jsonl]

Reads the autotp token file itself (runtime/token_data.h: ATPTOKS1 streams cut into windows of
seq + 1, or ATPTOKS2 examples padded/cut to seq + 1 with a loss mask), runs
AutoModelForCausalLM.from_pretrained(HF_DIR) in fp32 and prints the mean cross-entropy over every
counted label: the number `autotp train --eval-data` printed for the same model and file. With
--expect X (or --metrics FILE: the last eval_loss autotp recorded there) it exits non-zero when the
two differ by more than 1e-4 relative.
"""
import argparse
import struct
import sys

import numpy as np
import torch


def read_samples(path, seq):
    """[(input ids, labels)] per sample, labels -100 where no loss counts."""
    with open(path, "rb") as f:
        raw = f.read()
    magic = raw[:8]
    if magic == b"ATPTOKS1":
        width, _, n, _ = struct.unpack("<IIQQ", raw[8:32])
        ids = np.frombuffer(raw, dtype="<u2" if width == 2 else "<u4", count=n, offset=32).astype(np.int64)
        out = []
        for s in range((n - 1) // seq):
            w = ids[s * seq:s * seq + seq + 1]
            out.append((w[:-1], w[1:].copy()))
        return out
    if magic != b"ATPTOKS2":
        sys.exit(f"hf_eval: {path}: not an autotp token file")
    width, flags, n, _, pad, examples = struct.unpack("<IIQQQQ", raw[8:48])
    at = 48
    ids = np.frombuffer(raw, dtype="<u2" if width == 2 else "<u4", count=n, offset=at).astype(np.int64)
    at += n * width
    mask = np.ones(n, dtype=np.uint8)
    if flags & 1:
        mask = np.frombuffer(raw, dtype=np.uint8, count=n, offset=at)
        at += n
    if not flags & 2:
        out = []
        for s in range((n - 1) // seq):
            w, m = ids[s * seq:s * seq + seq + 1], mask[s * seq:s * seq + seq + 1]
            out.append((w[:-1], np.where(m[1:] == 1, w[1:], -100)))
        return out
    offsets = np.frombuffer(raw, dtype="<u8", count=examples + 1, offset=at).astype(np.int64)
    out = []
    for e in range(examples):
        w, m = ids[offsets[e]:offsets[e + 1]][:seq + 1], mask[offsets[e]:offsets[e + 1]][:seq + 1]
        inp = np.full(seq, pad, dtype=np.int64)
        lab = np.full(seq, -100, dtype=np.int64)
        inp[:min(seq, len(w))] = w[:seq]
        lab[:len(w) - 1] = np.where(m[1:] == 1, w[1:], -100)
        out.append((inp, lab))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("hf_dir")
    ap.add_argument("tokens")
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--expect", type=float, help="the eval loss autotp printed; fail beyond 1e-4 relative")
    ap.add_argument("--metrics", help="autotp's --metrics file: --expect is its last eval_loss")
    a = ap.parse_args()
    if a.metrics:
        import json
        evals = [json.loads(l) for l in open(a.metrics) if '"eval_loss"' in l]
        if not evals:
            sys.exit(f"hf_eval: {a.metrics}: no eval_loss recorded (train with --eval-data)")
        a.expect = evals[-1]["eval_loss"]
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(a.hf_dir, torch_dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for inp, lab in read_samples(a.tokens, a.seq):
            logits = model(torch.tensor(inp)[None]).logits[0]
            labels = torch.tensor(lab)
            total += torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum").item()
            count += int((labels != -100).sum())
    loss = total / max(count, 1)
    print(f"transformers {transformers.__version__} on {a.hf_dir}: eval loss {loss:.4f} over {count} tokens of {a.tokens}")
    if a.expect is not None:
        rel = abs(loss - a.expect) / abs(a.expect)
        print(f"autotp said {a.expect:.4f}: relative difference {rel:.1e}")
        if rel > 1e-4:
            sys.exit(1)


if __name__ == "__main__":
    main()

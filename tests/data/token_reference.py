"""Reference for TokenData, written from the format and order documented in runtime/token_data.h
alone: reads the raw file with numpy (no autotp code) and answers what tests/test_token_data.cpp asks.

    token_reference.py SPEC.json   ->  JSON on stdout

SPEC: {"file", "seq", "seed" (null: no shuffle), "queries": [[step, accum, ga, rank, dp, micro], ...],
       "loss_steps": [[step, ga, dp, micro], ...], "perms": [[seed, epoch, n], ...]}
Answer: {"samples", "truncated", "all": {"input", "labels"} (every sample in file order),
         "batches": [{"input", "labels"}, ...], "loss_tokens": [...], "perms": [[...], ...]}
"""
import json
import struct
import sys

import numpy as np

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def read(path):
    raw = open(path, "rb").read()
    magic = raw[:8]
    if magic == b"ATPTOKS1":
        width, _, n, vocab = struct.unpack_from("<IIQQ", raw, 8)
        flags, pad, examples, at = 0, 0, 0, 32
    elif magic == b"ATPTOKS2":
        width, flags, n, vocab, pad, examples = struct.unpack_from("<IIQQQQ", raw, 8)
        at = 48
    else:
        raise SystemExit(f"{path}: bad magic {magic!r}")
    ids = np.frombuffer(raw, dtype="<u2" if width == 2 else "<u4", count=n, offset=at).astype(np.int64)
    at += n * width
    mask = None
    if flags & 1:
        mask = np.frombuffer(raw, dtype=np.uint8, count=n, offset=at) != 0
        at += n
    offsets = None
    if flags & 2:
        offsets = np.frombuffer(raw, dtype="<u8", count=examples + 1, offset=at).astype(np.int64)
    return ids, mask, offsets, pad


def permutation(seed, epoch, n):
    """Fisher-Yates driven by splitmix64, as runtime/token_data.h words it."""
    state = (seed ^ (GOLDEN * (epoch + 1))) & M64

    def nxt():
        nonlocal state
        state = (state + GOLDEN) & M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = nxt() % (i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def main():
    spec = json.load(open(sys.argv[1]))
    ids, mask, offsets, pad = read(spec["file"])
    seq, seed = spec["seq"], spec.get("seed")
    keep = np.ones(len(ids), dtype=bool) if mask is None else mask
    rows = []  # (input, labels) per sample, file order
    if offsets is None:
        for i in range((len(ids) - 1) // seq):
            w, k = ids[i * seq:i * seq + seq + 1], keep[i * seq:i * seq + seq + 1]
            rows.append((w[:-1], np.where(k[1:], w[1:], -100)))
    else:
        for b, e in zip(offsets[:-1], offsets[1:]):
            w, k = ids[b:min(e, b + seq + 1)], keep[b:min(e, b + seq + 1)]
            inp = np.full(seq, pad, dtype=np.int64)
            inp[:min(len(w), seq)] = w[:seq]
            lab = np.full(seq, -100, dtype=np.int64)
            lab[:max(len(w) - 1, 0)] = np.where(k[1:], w[1:], -100)
            rows.append((inp, lab))
    n = len(rows)

    def sample(g):
        e, r = divmod(g, n)
        return r if seed is None else permutation(seed, e, n)[r]

    def rows_json(samples):
        return {"input": [rows[s][0].tolist() for s in samples], "labels": [rows[s][1].tolist() for s in samples]}

    out = {"samples": n, "all": rows_json(range(n)), "batches": [], "loss_tokens": [], "perms": []}
    out["truncated"] = 0 if offsets is None else int(np.sum(np.diff(offsets) > seq + 1))
    for step, accum, ga, rank, dp, micro in spec.get("queries", []):
        first = ((step * ga + accum) * dp + rank) * micro
        out["batches"].append(rows_json([sample(first + i) for i in range(micro)]))
    for step, ga, dp, micro in spec.get("loss_steps", []):
        size = ga * dp * micro
        out["loss_tokens"].append(int(sum(np.sum(rows[sample(g)][1] != -100) for g in range(step * size, (step + 1) * size))))
    for s, e, count in spec.get("perms", []):
        out["perms"].append(permutation(s, e, count))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()

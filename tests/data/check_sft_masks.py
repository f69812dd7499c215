"""SFT masks of scripts/tokenize_data.py against masks computed here by hand, with SmolLM2's tokenizer.

    check_sft_masks.py OUTDIR      (prints one line per check; exit 1 on the first mismatch)

The expected trained tokens of each assistant reply are the reply tokenized on its own plus the
end-of-turn token <|im_end|>, nothing else: not the system prompt, the user turns, <|im_start|>assistant\\n
or the newline after <|im_end|>. None of the script's mask code is used for the expectation; the files
are read raw by token_reference.read (the documented layout). Leaves OUTDIR/sharegpt.tokens,
alpaca.tokens, messages.train.tokens, messages.eval.tokens for the C++ test to open.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "scripts"))
import token_reference  # noqa: E402
import tokenize_data  # noqa: E402

SHAREGPT = {"system": "You are terse.", "conversations": [
    {"from": "human", "value": "What is the capital of Italy?"},
    {"from": "gpt", "value": "Rome."},
    {"from": "human", "value": "And of Spain?"},
    {"from": "gpt", "value": "Madrid is the capital of Spain."}]}
ALPACA = {"instruction": "Add the numbers.", "input": "2 + 3", "output": "2 + 3 = 5."}
MESSAGES = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w}!"}]}
            for w in ("one", "two", "three", "four", "five")]


def runs(mask):
    """Start and end of each run of 1s."""
    out, start = [], None
    for i, m in enumerate(list(mask) + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)
    print(f"ok: {what}")


def expect_masks(tok, path, replies, messages):
    ids, mask, offsets, _ = token_reference.read(path)
    check(offsets is not None and len(offsets) == 2 and mask is not None, f"{path}: one example with a mask")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    want = [tok(r, add_special_tokens=False)["input_ids"] + [im_end] for r in replies]
    got = [ids[b:e].tolist() for b, e in runs(mask)]
    check(got == want, f"{path}: trained tokens are exactly each reply + <|im_end|> ({got} vs {want})")
    check([tok.decode(g) for g in got] == [r + "<|im_end|>" for r in replies], f"{path}: they decode to the replies")
    check(ids.tolist() == list(tok.apply_chat_template(messages, tokenize=True)),
          f"{path}: the tokens are the chat template's rendering")
    return ids, mask


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    tok = tokenize_data.smollm2_tokenizer()
    files = {"sharegpt.jsonl": [SHAREGPT], "alpaca.json": [ALPACA], "messages.jsonl": MESSAGES}
    for name, records in files.items():
        with open(os.path.join(out, name), "w") as f:
            if name.endswith(".jsonl"):
                f.write("".join(json.dumps(r) + "\n" for r in records))
            else:
                json.dump(records, f)
    p = lambda name: os.path.join(out, name)  # noqa: E731

    tokenize_data.main(["--input", p("sharegpt.jsonl"), "--out", p("sharegpt.tokens")])  # format detected
    expect_masks(tok, p("sharegpt.tokens"), ["Rome.", "Madrid is the capital of Spain."],
                 [{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "What is the capital of Italy?"}, {"role": "assistant", "content": "Rome."},
                  {"role": "user", "content": "And of Spain?"},
                  {"role": "assistant", "content": "Madrid is the capital of Spain."}])

    tokenize_data.main(["--input", p("alpaca.json"), "--format", "alpaca", "--out", p("alpaca.tokens")])
    # SmolLM2's template adds its default system prompt when the conversation has none; input joins with "\n".
    ids, _ = expect_masks(tok, p("alpaca.tokens"), ["2 + 3 = 5."],
                          [{"role": "user", "content": "Add the numbers.\n2 + 3"},
                           {"role": "assistant", "content": "2 + 3 = 5."}])
    check("You are a helpful AI assistant named SmolLM" in tok.decode(ids), "alpaca: the default system prompt is there")

    # --cutoff-len keeps the first N tokens (and their mask) of a longer example.
    tokenize_data.main(["--input", p("alpaca.json"), "--out", p("alpaca_cut.tokens"), "--cutoff-len", str(len(ids) - 2)])
    cut, cut_mask, _, _ = token_reference.read(p("alpaca_cut.tokens"))
    full_mask = token_reference.read(p("alpaca.tokens"))[1]
    check(cut.tolist() == ids[:len(ids) - 2].tolist() and cut_mask.tolist() == full_mask[:len(ids) - 2].tolist(),
          "--cutoff-len cuts the example and its mask")

    # --eval-split holds out round(0.4 * 5) = 2 whole examples; together the two files hold each once.
    tokenize_data.main(["--input", p("messages.jsonl"), "--out", p("messages.train.tokens"),
                        "--eval-split", "0.4", "--eval-out", p("messages.eval.tokens")])
    seen = []
    for name, count in (("messages.train.tokens", 3), ("messages.eval.tokens", 2)):
        ids, mask, offsets, _ = token_reference.read(p(name))
        check(len(offsets) - 1 == count, f"{name}: {count} examples")
        seen += [tok.decode(ids[b:e][mask[b:e]]) for b, e in zip(offsets[:-1], offsets[1:])]
    check(sorted(seen) == sorted(f"{w}!<|im_end|>" for w in ("one", "two", "three", "four", "five")),
          "train + eval hold every example once")


if __name__ == "__main__":
    main()

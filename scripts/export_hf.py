#!/usr/bin/env python3
"""Export a local Hugging Face causal LM as a TorchScript archive autotp plans, rewrites and trains.

  scripts/export_hf.py HF_MODEL_DIR --out MODEL.pt [--dtype fp32|bf16] [--seq N]

The model is loaded with eager attention, no cache and tuple outputs, and traced on [2, N] token ids
(what autotp needs: the logits as the first output; transformers 4.51 traces read batch and sequence
from the ids, so the archive runs other shapes too). The folder's side files -- config.json,
generation_config.json, the tokenizer files, the chat template -- travel inside the archive as the
string attribute `autotp_hf_files` (JSON {file name: text}; binary files as "base64:..."), which
`autotp rewrite` and `autotp train` keep on every rank archive, so that `autotp merge` can write a
complete Hugging Face folder back out.

tests/fixtures/make_fixtures.py traces its fixtures with trace() and attaches files with the
helpers here: one copy of how autotp's archives are made.
"""
import argparse
import base64
import json
import os
import sys
import tempfile

import torch

SEQ = 8
BATCH = 2
TEXT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "chat_template.jinja")
BINARY_FILES = ("tokenizer.model",)
ATTRIBUTE = "autotp_hf_files"


def trace(model: torch.nn.Module, vocab: int, batch: int = BATCH, seq: int = SEQ) -> torch.jit.ScriptModule:
    """The model traced on fixed token ids (seed 1), in eval mode, without the trace check (which
    reruns the model and compares: slow, and HF models trip it on harmless constants)."""
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.jit.trace(model.eval(), (ids,), check_trace=False)


def hf_files_of(folder: str) -> dict:
    """The side files of a Hugging Face folder that exist there, as the archive attribute holds them."""
    files = {}
    for name in TEXT_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                files[name] = f.read()
    for name in BINARY_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                files[name] = "base64:" + base64.b64encode(f.read()).decode("ascii")
    return files


def saved_hf_files(model: torch.nn.Module, tokenizer=None) -> dict:
    """The side files of a model built in memory (from a config, or from a GGUF), as save_pretrained
    writes them. The config says what a user loads, not how it was traced: outputs as a dict and
    the cache on again, attention left to transformers' default."""
    import copy
    config = copy.deepcopy(model.config)
    config.return_dict = True
    config.use_cache = True
    config._attn_implementation_internal = None
    if hasattr(config, "_attn_implementation_autoset"):
        del config._attn_implementation_autoset
    config.architectures = [type(model).__name__]
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            generation = copy.deepcopy(model.generation_config)
            generation.use_cache = True  # copied from the traced config, where it was off
            generation.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        return hf_files_of(tmp)


def attach_hf_files(traced: torch.jit.ScriptModule, files: dict) -> torch.jit.ScriptModule:
    """Puts files on the archive as the string attribute autotp_hf_files (kept by save/load and by
    the rank archives autotp writes); returns the archive."""
    traced._c._register_attribute(ATTRIBUTE, torch._C.StringType.get(), json.dumps(files, sort_keys=True))
    return traced


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", help="a local Hugging Face model folder (config.json + weights)")
    ap.add_argument("--out", required=True, help="the TorchScript archive to write")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--seq", type=int, default=SEQ, help="sequence length of the trace ids (default 8)")
    a = ap.parse_args()
    if not os.path.isfile(os.path.join(a.model_dir, "config.json")):
        sys.exit(f"export_hf: {a.model_dir}: no config.json; give a Hugging Face model folder")
    import transformers
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    model = transformers.AutoModelForCausalLM.from_pretrained(
        a.model_dir, torch_dtype=dtype, attn_implementation="eager", return_dict=False, use_cache=False)
    traced = trace(model, model.config.vocab_size, seq=a.seq)
    files = hf_files_of(a.model_dir)
    attach_hf_files(traced, files).save(a.out)
    print(f"export_hf: wrote {a.out} ({sum(p.numel() for p in model.parameters())} parameters, {a.dtype}; "
          f"side files: {', '.join(sorted(files)) or 'none'})")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The Python half of scripts/gpu_check.sh (README "GPU check"): make the model, run the eager
baseline, write the report.

  gpu_check.py make-model --work DIR --hidden H --intermediate I --layers L --heads A --kv-heads K --vocab V
      A Llama of that shape from a config, random weights (seed 0), in bf16 with eager attention,
      traced by scripts/export_hf.py's trace() on the CPU: DIR/model.pt; DIR/model.json holds the
      config and the parameter count.
  gpu_check.py eager --work DIR --steps N --seq S --device cuda|cpu [--lr X]
      The same model as a plain transformers LlamaForCausalLM (bf16 weights on the device, sdpa
      attention, the archive's weights), torch.optim.AdamW, on the same batches autotp trains on
      (DIR/train.tokens in file order, micro-batch 1), each step timed to a device sync: DIR/eager.json.
  gpu_check.py report --work DIR --warmup W --peak-flops F --budget SECONDS [--dry-run]
      Reads what the steps left in DIR and prints the report (also DIR/report.txt, DIR/report.json).
"""
import argparse
import json
import math
import os
import re
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# CUDA and CPU run the same fp32 forward and backward on the same batch; their reference losses may
# differ by rounding only (see loss_tolerance_note).
LOSS_TOLERANCE = 1e-4
# The AdamW settings of both loops (autotp's DeepSpeed config and torch.optim.AdamW's arguments).
BETAS = (0.9, 0.95)
EPS = 1e-8
CLIP = 1.0


def make_model(a):
    import torch
    import transformers
    from export_hf import attach_hf_files, saved_hf_files, trace
    t0 = time.time()
    cfg = transformers.LlamaConfig(
        vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate, num_hidden_layers=a.layers,
        num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, max_position_embeddings=4096,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, use_cache=False, return_dict=False)
    torch.manual_seed(0)
    # Initialised on the GPU when there is one (seconds, where the CPU takes tens for 1B parameters),
    # traced on the CPU: a trace records the device of the tensors it makes.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = transformers.LlamaForCausalLM._from_config(cfg, torch_dtype=torch.bfloat16, attn_implementation="eager")
    model.to("cpu")
    n = sum(p.numel() for p in model.parameters())
    t1 = time.time()
    traced = trace(model, a.vocab)
    t2 = time.time()
    os.makedirs(a.work, exist_ok=True)
    attach_hf_files(traced, saved_hf_files(model)).save(os.path.join(a.work, "model.pt"))
    config = {k: getattr(cfg, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                           "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                                           "rms_norm_eps", "rope_theta", "tie_word_embeddings")}
    with open(os.path.join(a.work, "model.json"), "w") as f:
        json.dump({"parameters": n, "config": config, "dtype": "bf16", "seed": 0,
                   "transformers": transformers.__version__, "torch": torch.__version__}, f, indent=1)
    print(f"gpu_check: Llama of {n:,} parameters (hidden {a.hidden}, intermediate {a.intermediate}, {a.layers} layers, "
          f"{a.heads}/{a.kv_heads} heads, vocab {a.vocab}), bf16, seed 0: built in {t1 - t0:.1f} s, traced in "
          f"{t2 - t1:.1f} s, saved in {time.time() - t2:.1f} s (transformers {transformers.__version__})")


def read_tokens(path):
    """A version-1 token stream (runtime/token_data.h) as a numpy array."""
    import numpy as np
    with open(path, "rb") as f:
        head = f.read(32)
        if head[:8] != b"ATPTOKS1":
            sys.exit(f"gpu_check: {path}: not a version-1 token stream")
        width = int.from_bytes(head[8:12], "little")
        count = int.from_bytes(head[16:24], "little")
        ids = np.frombuffer(f.read(count * width), dtype="<u2" if width == 2 else "<u4")
    return ids.astype(np.int64)


def eager(a):
    import torch
    import torch.nn.functional as F
    import transformers
    info = json.load(open(os.path.join(a.work, "model.json")))
    dev = torch.device(a.device)
    cfg = transformers.LlamaConfig(**info["config"], use_cache=False)
    t0 = time.time()
    with dev:
        model = transformers.LlamaForCausalLM._from_config(cfg, torch_dtype=torch.bfloat16, attn_implementation="sdpa")
    # The archive's weights, so both loops start from the same model (its parameter names are HF's).
    # (read on the CPU, so the device's peak memory is the training's alone)
    archived = torch.jit.load(os.path.join(a.work, "model.pt"), map_location="cpu").state_dict()
    own = model.state_dict()
    missing = [k for k in own if k not in archived and not k.endswith("inv_freq")]
    if missing:
        sys.exit(f"gpu_check: the archive lacks {len(missing)} of the model's tensors, e.g. {missing[0]}")
    model.load_state_dict({k: archived[k].to(own[k].dtype) for k in own if k in archived}, strict=False)
    del archived
    model.train()
    load_s = time.time() - t0
    ids = read_tokens(os.path.join(a.work, "train.tokens"))
    seq, vocab = a.seq, cfg.vocab_size
    if (len(ids) - 1) // seq < a.steps:
        sys.exit(f"gpu_check: train.tokens holds {(len(ids) - 1) // seq} samples of {seq}, {a.steps} needed")
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=BETAS, eps=EPS, weight_decay=0.0)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    steps = []
    for step in range(a.steps):
        sample = torch.from_numpy(ids[step * seq: step * seq + seq + 1])  # sample `step` of the stream, in file order
        sync()
        t = time.perf_counter()
        inp = sample[:-1].view(1, seq).to(dev)
        lab = sample[1:].view(1, seq).to(dev)
        logits = model(input_ids=inp)[0]
        loss = F.cross_entropy(logits.float().view(-1, vocab), lab.view(-1))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = loss.item()
        sync()
        dt = time.perf_counter() - t
        steps.append({"step": step + 1, "loss": value, "grad_norm": float(norm), "seconds": dt, "tokens_per_s": seq / dt})
        print(f"eager step {step + 1}/{a.steps}  loss {value:.4f}  grad_norm {float(norm):.4f}  tokens/s {seq / dt:.1f}", flush=True)
    out = {"steps": steps, "load_seconds": load_s, "device": str(dev), "torch": torch.__version__,
           "cuda": torch.version.cuda, "transformers": transformers.__version__, "lr": a.lr,
           "device_name": torch.cuda.get_device_name(dev) if cuda else "cpu",
           "max_memory_allocated": torch.cuda.max_memory_allocated(dev) if cuda else None}
    with open(os.path.join(a.work, "eager.json"), "w") as f:
        json.dump(out, f, indent=1)


# ---- report --------------------------------------------------------------------------------------------

def parse_verify(path):
    """autotp verify's output: each quantity's max rel error and the reference and sharded losses."""
    if not os.path.isfile(path):
        return None
    text = open(path).read()
    r = {"ok": bool(re.search(r"^OK$", text, re.M))}
    for name in ("logits", "loss", "grads"):
        m = re.search(rf"^\s+{name}\s+max rel error ([0-9.eE+-]+)", text, re.M)
        if m:
            r[name] = float(m.group(1))
    m = re.search(r"reference ([0-9.eE+-]+), sharded ([0-9.eE+-]+)", text)
    if m:
        r["reference_loss"], r["sharded_loss"] = float(m.group(1)), float(m.group(2))
    m = re.search(r"^\s+tolerance ([0-9.eE+-]+)", text, re.M)
    if m:
        r["tolerance"] = float(m.group(1))
    return r


def median_after(rows, key, warmup):
    vals = [r[key] for r in rows if r["step"] > warmup] or [r[key] for r in rows]
    return statistics.median(vals) if vals else float("nan")


def gib(b):
    if b is None:
        return "n/a"
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if b >= 1 << shift:
            return f"{b / (1 << shift):.2f} {unit}"
    return f"{b} B"


def report(a):
    w = a.work
    lines = []
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dry_run": a.dry_run}
    model = json.load(open(os.path.join(w, "model.json"))) if os.path.isfile(os.path.join(w, "model.json")) else None
    eager_run = json.load(open(os.path.join(w, "eager.json"))) if os.path.isfile(os.path.join(w, "eager.json")) else None
    metrics = []
    if os.path.isfile(os.path.join(w, "metrics.jsonl")):
        metrics = [json.loads(x) for x in open(os.path.join(w, "metrics.jsonl")) if x.strip()]
        metrics = [m for m in metrics if "loss" in m]
    machine = eager_run["device_name"] if eager_run else "?"
    if eager_run:
        machine += f" (torch {eager_run['torch']}" + (f", CUDA {eager_run['cuda']}" if eager_run["cuda"] else "") + ")"
    out["machine"] = machine
    lines.append(f"autotp GPU check, {out['date']}, {machine}" + ("  [DRY RUN on the CPU: tiny model, not a measurement]" if a.dry_run else ""))

    # steps and their times
    rows = []
    if os.path.isfile(os.path.join(w, "steps.tsv")):
        rows = [l.rstrip("\n").split("\t") for l in open(os.path.join(w, "steps.tsv")) if l.strip()]
    total = sum(float(r[2]) for r in rows)
    out["steps"] = [{"name": r[0], "rc": int(r[1]), "seconds": float(r[2])} for r in rows]
    out["seconds_total"] = total
    lines.append("steps      " + " | ".join(f"{r[0]} {float(r[2]):.1f} s" + ("" if r[1] == "0" else f" (rc {r[1]})") for r in rows)
                 + f" | total {total:.0f} s of a {a.budget:.0f} s budget")
    failed = [r[0] for r in rows if r[1] != "0"]

    if model:
        c = model["config"]
        lines.append(f"model      Llama, {model['parameters']:,} parameters (hidden {c['hidden_size']}, intermediate "
                     f"{c['intermediate_size']}, {c['num_hidden_layers']} layers, {c['num_attention_heads']}/"
                     f"{c['num_key_value_heads']} heads, vocab {c['vocab_size']}), random weights (seed 0), traced in bf16 "
                     f"(transformers {model['transformers']})")

    # verify: the device run against the CPU run
    vg, vc = parse_verify(os.path.join(w, "verify_device.txt")), parse_verify(os.path.join(w, "verify_cpu.txt"))
    out["verify"] = {"device": vg, "cpu": vc}
    if vg or vc:
        lines.append(f"verify     tp 2, {a.verify_shape}, fp32, --sdpa (each: ranks vs the unsharded model on its device)")
        for name, v in (("device", vg), ("cpu", vc)):
            if v is None:
                lines.append(f"  {name:8s} did not run")
                continue
            lines.append(f"  {name:8s} logits {v.get('logits', float('nan')):.2e}  loss {v.get('loss', float('nan')):.2e}  "
                         f"grads {v.get('grads', float('nan')):.2e}  (tolerance {v.get('tolerance', float('nan')):.0e})  "
                         f"reference loss {v.get('reference_loss', float('nan')):.8f}  {'OK' if v['ok'] else 'FAILED'}")
        if vg and vc and "reference_loss" in vg and "reference_loss" in vc:
            rel = abs(vg["reference_loss"] - vc["reference_loss"]) / abs(vc["reference_loss"])
            rel_s = abs(vg["sharded_loss"] - vc["sharded_loss"]) / abs(vc["sharded_loss"])
            ok = max(rel, rel_s) <= LOSS_TOLERANCE and vg["ok"] and vc["ok"]
            out["verify"]["device_vs_cpu"] = {"reference_loss_rel": rel, "sharded_loss_rel": rel_s,
                                              "tolerance": LOSS_TOLERANCE, "ok": ok}
            lines.append(f"  device vs cpu: reference loss rel {rel:.2e}, sharded loss rel {rel_s:.2e} "
                         f"(tolerance {LOSS_TOLERANCE:.0e}): {'ok' if ok else 'FAIL'}")
            if not ok:
                failed.append("verify device vs cpu")

    # training: tokens/s, MFU, memory
    n = model["parameters"] if model else None
    res = {}
    if metrics:
        tps = median_after(metrics, "tokens_per_s", a.warmup)
        res["autotp"] = {"tokens_per_s": tps, "step_seconds": median_after(metrics, "seconds", a.warmup),
                         "loss_first": metrics[0]["loss"], "loss_last": metrics[-1]["loss"], "steps": len(metrics),
                         "cuda_peak_allocated_bytes": metrics[-1].get("cuda_peak_allocated_bytes"),
                         "peak_activation_bytes": metrics[-1].get("peak_activation_bytes")}
    if eager_run and eager_run["steps"]:
        s = eager_run["steps"]
        res["eager"] = {"tokens_per_s": median_after(s, "tokens_per_s", a.warmup), "step_seconds": median_after(s, "seconds", a.warmup),
                        "loss_first": s[0]["loss"], "loss_last": s[-1]["loss"], "steps": len(s),
                        "max_memory_allocated": eager_run["max_memory_allocated"]}
    for r in res.values():
        r["mfu"] = 6 * n * r["tokens_per_s"] / a.peak_flops if n else None
    out["train"] = res
    if res:
        lines.append(f"train      {a.steps} steps, seq {a.seq}, micro-batch 1, bf16, tp 1, sdpa; median over steps "
                     f"{a.warmup + 1}-{a.steps} (first {a.warmup} are warm-up)")
        for name, r in res.items():
            mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%" if r["mfu"] >= 1e-3 else f"{100 * r['mfu']:.0e}%"
            lines.append(f"  {name:8s} tokens/s {r['tokens_per_s']:10.1f}  step {r['step_seconds'] * 1e3:8.1f} ms  MFU {mfu:>6s}  "
                         f"loss {r['loss_first']:.4f} (step 1) -> {r['loss_last']:.4f} (step {r['steps']})")
        if "autotp" in res and "eager" in res:
            ratio = res["autotp"]["tokens_per_s"] / res["eager"]["tokens_per_s"]
            d1 = abs(res["autotp"]["loss_first"] - res["eager"]["loss_first"]) / abs(res["eager"]["loss_first"])
            out["train"]["autotp_over_eager"] = ratio
            out["train"]["step1_loss_rel"] = d1
            lines.append(f"  autotp / eager tokens/s: {ratio:.3f}   step-1 loss (same weights, same batch) differs by {d1:.1e} relative")
        lines.append("  eager = transformers LlamaForCausalLM (sdpa) + torch.optim.AdamW on bf16 parameters (bf16 states, no fp32 "
                     "master); autotp = the traced graph, bf16 compute, fp32 master weights and Adam states (ZeRO-1)")
        lines.append(f"  MFU = 6 * N * tokens/s / {a.peak_flops:.3g} (N = {n:,} parameters, embeddings included; attention "
                     f"FLOPs not counted; {a.peak_flops / 1e12:.0f} TFLOP/s = H200 SXM dense bf16 peak, datasheet)")

    # memory against the plan
    plan = None
    if os.path.isfile(os.path.join(w, "plan.json")):
        try:
            plan = json.load(open(os.path.join(w, "plan.json")))
        except ValueError:
            plan = None
    row = next((s for s in plan["strategies"] if s["name"] == "ZeRO-1"), None) if plan else None
    if row or "autotp" in res:
        lines.append("memory     autotp plan MODEL.pt --gpus-per-node 1 --seq {} --micro-batch 1 --global-batch 1 --dtype bf16 "
                     "--flash-attention, row ZeRO-1 (tp 1, dp 1)".format(a.seq))
        pm = row["memory_bytes"] if row else {}
        peak = res.get("autotp", {}).get("cuda_peak_allocated_bytes")
        act = res.get("autotp", {}).get("peak_activation_bytes")
        if pm:
            lines.append("  predicted  total {}  (params {}, grads {}, optimizer {}, buffers {}, activations {})".format(
                gib(pm["total"]), gib(pm["params"]), gib(pm["grads"]), gib(pm["optimizer"]), gib(pm["buffers"]), gib(pm["activations"])))
        lines.append("  measured   max_memory_allocated {}{}   activations (train --metrics peak_activation_bytes) {}{}".format(
            gib(peak), f" = {peak / pm['total']:.3f} x predicted" if peak and pm else " (none: not a CUDA run)" if not peak else "",
            gib(act), f" = {act / pm['activations']:.3f} x predicted" if act and pm else ""))
        if "eager" in res:
            lines.append(f"  eager      max_memory_allocated {gib(res['eager']['max_memory_allocated'])} (bf16 AdamW states, no fp32 master)")
        out["memory"] = {"plan": pm, "cuda_peak_allocated_bytes": peak, "peak_activation_bytes": act}
    out["failed"] = failed
    lines.append("result     " + ("every step ran and every check held" if not failed else "FAILED: " + ", ".join(failed)))
    text = "\n".join(lines) + "\n"
    print(text, end="")
    with open(os.path.join(w, "report.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(w, "report.json"), "w") as f:
        json.dump(out, f, indent=1)
    return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-model")
    m.add_argument("--work", required=True)
    for k in ("hidden", "intermediate", "layers", "heads", "kv-heads", "vocab"):
        m.add_argument("--" + k, type=int, required=True)
    e = sub.add_parser("eager")
    e.add_argument("--work", required=True)
    e.add_argument("--steps", type=int, required=True)
    e.add_argument("--seq", type=int, required=True)
    e.add_argument("--device", default="cuda")
    e.add_argument("--lr", type=float, default=1e-4)
    r = sub.add_parser("report")
    r.add_argument("--work", required=True)
    r.add_argument("--steps", type=int, required=True)
    r.add_argument("--seq", type=int, required=True)
    r.add_argument("--warmup", type=int, default=5)
    r.add_argument("--peak-flops", type=float, default=989e12)
    r.add_argument("--budget", type=float, default=480)
    r.add_argument("--verify-shape", default="batch 1 x 128")
    r.add_argument("--dry-run", action="store_true")
    a = ap.parse_args()
    if a.cmd == "make-model":
        make_model(a)
    elif a.cmd == "eager":
        eager(a)
    else:
        return report(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""LLaMA-Factory + DeepSpeed against `autotp train --llamafactory`: per-step losses and final weights.

    llamafactory_compare.py --llamafactory LF_OUT --autotp AUTOTP_OUT --metrics AUTOTP_METRICS.jsonl
                            [--init MODEL_DIR] [--tol 1e-4] [--markdown TABLE.md]

LF_OUT is LLaMA-Factory's output_dir (trainer_log.jsonl with logging_steps 1, model.safetensors saved by
the Trainer); AUTOTP_OUT is autotp's output_dir (model.safetensors merged from its last checkpoint),
AUTOTP_METRICS its --metrics file. Prints one row per step: both losses and their relative difference
|a - b| / |b|, both gradient norms (before clipping) and the learning rates; then the worst loss
difference and, over every tensor, max |a - b| / max |b| of the final weights (and, with --init, the same
difference over the size of the update, max |b - init|). Exits 1 when a step is missing on either side,
the tensors differ in names, shapes or dtypes, or the worst loss or weight difference is above --tol.

The learning rates are shown, not judged: the Trainer logs the rate its scheduler holds after the step
(the next step's), autotp the rate the step used, so LLaMA-Factory's row s is autotp's row s + 1.
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def rel(a, b):
    return abs(a - b) / abs(b) if b != 0 else abs(a - b)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llamafactory", required=True, metavar="DIR", help="LLaMA-Factory's output_dir")
    ap.add_argument("--autotp", required=True, metavar="DIR", help="autotp's output_dir (merged model.safetensors)")
    ap.add_argument("--metrics", required=True, metavar="FILE", help="autotp's --metrics FILE.jsonl")
    ap.add_argument("--init", metavar="DIR", help="the model folder both started from (for the update size)")
    ap.add_argument("--tol", type=float, default=1e-4, help="relative tolerance for losses and weights (default 1e-4)")
    ap.add_argument("--markdown", metavar="FILE", help="also write the per-step table as Markdown")
    args = ap.parse_args()

    lf_log = [r for r in read_jsonl(os.path.join(args.llamafactory, "trainer_log.jsonl")) if "loss" in r]
    lf = {r["current_steps"]: r for r in lf_log}
    # transformers' log_history has the gradient norm, which trainer_log.jsonl leaves out.
    with open(os.path.join(args.llamafactory, "trainer_state.json")) as f:
        for h in json.load(f)["log_history"]:
            if "loss" in h and h.get("step") in lf:
                lf[h["step"]]["grad_norm"] = h.get("grad_norm")
    at = {r["step"]: r for r in read_jsonl(args.metrics) if "loss" in r}
    problems = []
    steps = sorted(set(lf) | set(at))
    for s in steps:
        if s not in lf or s not in at:
            problems.append(f"step {s}: only in {'LLaMA-Factory' if s in lf else 'autotp'}'s log")
    both = [s for s in steps if s in lf and s in at]
    if not both:
        problems.append("no step in both logs")

    header = ("| step | LLaMA-Factory loss | autotp loss | rel. diff | LLaMA-Factory grad norm | autotp grad norm "
              "| autotp lr (used) | LLaMA-Factory lr (after the step) |")
    rows = [header, "|" + "---|" * 8]
    worst_loss, worst_gn = 0.0, 0.0
    for s in both:
        a, b = lf[s]["loss"], at[s]["loss"]
        d = rel(a, b)
        worst_loss = max(worst_loss, d)
        ga, gb = lf[s].get("grad_norm"), at[s].get("grad_norm")
        if ga is not None and gb is not None:
            worst_gn = max(worst_gn, rel(ga, gb))
        rows.append(f"| {s} | {a:.7f} | {b:.7f} | {d:.1e} | {ga if ga is None else f'{ga:.6f}'} | "
                    f"{gb if gb is None else f'{gb:.6f}'} | {at[s]['lr']:.4e} | {lf[s]['lr']:.4e} |")
    table = "\n".join(rows)
    print(table)
    print(f"worst loss rel. diff        {worst_loss:.2e} over {len(both)} steps (tolerance {args.tol:g})")
    print(f"worst grad norm rel. diff   {worst_gn:.2e}")
    if worst_loss > args.tol:
        problems.append(f"loss: worst relative difference {worst_loss:.2e} > {args.tol:g}")

    A = load_file(os.path.join(args.llamafactory, "model.safetensors"))
    B = load_file(os.path.join(args.autotp, "model.safetensors"))
    I = load_file(os.path.join(args.init, "model.safetensors")) if args.init else None
    if set(A) != set(B):
        problems.append(f"weights: only in LLaMA-Factory's: {sorted(set(A) - set(B))}; only in autotp's: {sorted(set(B) - set(A))}")
    worst_w, worst_w_name, worst_u, worst_u_name = 0.0, "", 0.0, ""
    for name in sorted(set(A) & set(B)):
        a, b = A[name], B[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"weights: {name}: LLaMA-Factory {a.dtype} {tuple(a.shape)}, autotp {b.dtype} {tuple(b.shape)}")
            continue
        a, b = a.double(), b.double()
        diff = (a - b).abs().max().item()
        w = diff / max(b.abs().max().item(), 1e-30)
        if w > worst_w:
            worst_w, worst_w_name = w, name
        if I is not None and name in I:
            moved = (b - I[name].double()).abs().max().item()
            u = diff / max(moved, 1e-30)
            if u > worst_u:
                worst_u, worst_u_name = u, name
    print(f"final weights: {len(set(A) & set(B))} tensors, {A[next(iter(A))].dtype}; "
          f"worst max|a-b|/max|b| {worst_w:.2e} ({worst_w_name}, tolerance {args.tol:g})")
    if I is not None:
        print(f"               worst max|a-b|/max|b-init| {worst_u:.2e} ({worst_u_name}: the difference over the size of the update)")
    if worst_w > args.tol:
        problems.append(f"weights: worst relative difference {worst_w:.2e} > {args.tol:g} ({worst_w_name})")

    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n\n")
            f.write(f"Worst loss relative difference {worst_loss:.1e}; final weights: worst max|a−b|/max|b| {worst_w:.1e}"
                    + (f", worst max|a−b|/max|b−init| {worst_u:.1e}" if I is not None else "") + ".\n")
    if problems:
        for p in problems:
            print("llamafactory-check: " + p, file=sys.stderr)
        return 1
    print("llamafactory-check: ok (LLaMA-Factory + DeepSpeed and autotp agree within %g)" % args.tol)
    return 0


if __name__ == "__main__":
    sys.exit(main())

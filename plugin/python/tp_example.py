"""Run a rewritten autotp archive from Python under torchrun and check it against the original.

    build/autotp rewrite build/fixtures/llama_gqa.pt --tp 2 --out /tmp/gqa_tp2
    torchrun --standalone --nproc_per_node 2 plugin/python/tp_example.py \
        --lib build/libautotp.so --ranks /tmp/gqa_tp2 --original build/fixtures/llama_gqa.pt

Each process loads libautotp.so with torch.ops.load_library (that registers torch.ops.autotp.*,
which the rewritten graphs call), joins the mesh torchrun describes, runs its rank's archive, and
compares its vocab slice of the logits with the same slice of the original model's logits.
Exit status 0 when the largest relative error is within 1e-5.
"""
import argparse
import json
import sys

import torch


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True, help="path to libautotp.so")
    ap.add_argument("--ranks", required=True, help="directory written by `autotp rewrite` (rank<r>.pt)")
    ap.add_argument("--original", required=True, help="the unsharded TorchScript model")
    ap.add_argument("--tolerance", type=float, default=1e-5)
    args = ap.parse_args()

    torch.ops.load_library(args.lib)
    tp = torch.jit.load(f"{args.ranks}/rank0.pt").autotp_tp
    rank, world, tp_rank, _ = torch.ops.autotp.init_mesh_from_env(tp)
    mine = torch.jit.load(f"{args.ranks}/rank{tp_rank}.pt")
    original = torch.jit.load(args.original)

    ids = torch.randint(mine.autotp_vocab, (2, 8), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        local = mine(ids)
        full = original(ids)
    local = local[0] if isinstance(local, tuple) else local
    full = full[0] if isinstance(full, tuple) else full
    width = local.shape[-1]
    expected = full[..., tp_rank * width:(tp_rank + 1) * width]
    err = ((local - expected).abs().max() / full.abs().max()).item()
    stats = json.loads(torch.ops.autotp.collective_stats())
    print(f"rank {rank}/{world} tp_rank {tp_rank}: logits slice {tuple(local.shape)} of {tuple(full.shape)}, "
          f"max rel error {err:.3e}, tp all-reduces {stats['tp']['total']['calls']} "
          f"({stats['tp']['total']['bytes']} bytes)")
    return 0 if err <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())

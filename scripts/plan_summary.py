"""The README's "Can AutoTP + ZeRO-1 replace ZeRO-3?" table: `autotp plan --json` for three Llama
configs on three clusters, ZeRO-3 beside the best AutoTP(t)+ZeRO-1 that fits, and the recommendation.

    .venv/bin/python scripts/plan_summary.py build/autotp [--seq 4096 --micro-batch 1 --global-batch 64]

Models: configs/models/*.json (the public Llama-2-7B, Llama-3-8B, Llama-2-70B hyperparameters).
Clusters: 8 x 24 GiB on PCIe (rtx4090-pcie-eth), 8 x 80 GiB H100 NVLink, 2 x 8 x 80 GiB with 400 Gb/s
InfiniBand (h100-nvlink-ib400 --nodes 2). bf16, full activation checkpointing, FlashAttention.
"""
import argparse
import json
import os
import subprocess
import sys

MODELS = [("Llama-2-7B", "llama2_7b.json"), ("Llama-3-8B", "llama3_8b.json"), ("Llama-2-70B", "llama2_70b.json")]
CLUSTERS = [("8×24 GiB PCIe", ["--cluster", "rtx4090-pcie-eth"]), ("8×80 GiB NVLink", ["--cluster", "h100-nvlink-ib400"]),
            ("2×8×80 GiB IB", ["--cluster", "h100-nvlink-ib400", "--nodes", "2"])]
GIB, GB = 1024 ** 3, 1e9


def plan(cli, config, cluster, a):
    cmd = [cli, "plan", "--hf-config", config, *cluster, "--seq", str(a.seq), "--micro-batch", str(a.micro_batch),
           "--global-batch", str(a.global_batch), "--activation-checkpointing", "--flash-attention", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"plan_summary: {' '.join(cmd)}: {r.stderr.strip()}")
    return json.loads(r.stdout)


def cell(s):
    if s is None:
        return "–"
    m, c = s["memory_bytes"]["total"] / GIB, s["comm_bytes_per_step"]
    where = f"{c['inter_node'] / GB:.1f} GB inter" if c["inter_node"] else f"{c['intra_node'] / GB:.0f} GB intra"
    return f"{s['name']}: {m:.1f} GiB{'' if s['fits'] else ' (does not fit)'}, {where}, {s['comm_seconds']:.2f} s"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cli")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--global-batch", type=int, default=64)
    a = ap.parse_args()
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "models")
    print("| model | cluster | ZeRO-3 | best AutoTP(t)+ZeRO-1 | recommended |")
    print("|---|---|---|---|---|")
    for model, file in MODELS:
        for cname, cluster in CLUSTERS:
            p = plan(a.cli, os.path.join(here, file), cluster, a)
            by = {s["name"]: s for s in p["strategies"]}
            tp_rows = [s for s in p["strategies"] if s["tp"] > 1 and s["zero_stage"] == 1]
            fitting = [s for s in tp_rows if s["fits"]]
            best = min(fitting, key=lambda s: (s["comm_bytes_per_step"]["inter_node"], s["comm_seconds"])) if fitting else \
                min(tp_rows, key=lambda s: s["memory_bytes"]["total"]) if tp_rows else None
            print(f"| {model} | {cname} | {cell(by.get('ZeRO-3'))} | {cell(best)} | {p['recommended'] or 'nothing fits'} |")


if __name__ == "__main__":
    main()

"""AutoTP(2) + ZeRO-1 against plain data-parallel ZeRO-1, 4 processes, one run (make bench).

Model: the 32-layer Llama-7B-shaped graph (32 heads, hidden 256, vocab 32000; ~41M parameters) that
the benchmark fixtures build. Both jobs train the same data with the same config apart from
tensor_parallel.autotp_size (2 vs 1), fp32, micro-batch 1 x 32 tokens, no accumulation.
A third job repeats DP(4) ZeRO-1 with zero_optimization.overlap_comm (the gradient reduction in
buckets during backward). Reported, from each job's --metrics JSON lines (steps after the first):
  - step time, median, and the ratio AutoTP(2)+ZeRO-1 / DP(4) ZeRO-1;
  - data-parallel bytes per step: the payload autotp counts (reduce-scatter input + all-gather
    input), the ring wire bytes that payload implies ((dp-1)/dp of reduce-scatter input + all-gather
    output), and the textbook 2(dp-1)/dp x gradient bytes / tp with the ratio measured/formula;
  - tensor-parallel bytes per step and optimizer-state bytes per rank.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BUILD", os.path.join(ROOT, "build"))
MODEL = os.path.join(BUILD, "fixtures", "llama7b_shape.pt")
STEPS, SEQ, WORLD = 6, 32, 4


def run(tmp, tp, overlap=False):
    name = f"tp{tp}" + ("_overlap" if overlap else "")
    cfg = os.path.join(tmp, f"{name}.json")
    zero = {"stage": 1}
    if overlap:  # DP reduction in buckets of 2M elements during backward (DeepSpeed's default 5e8 is one bucket here)
        zero.update(overlap_comm=True, reduce_bucket_size=2_000_000, allgather_bucket_size=2_000_000)
    with open(cfg, "w") as f:
        json.dump({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                   "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.0}},
                   "zero_optimization": zero, "tensor_parallel": {"autotp_size": tp},
                   "gradient_clipping": 1.0, "steps_per_print": 1000, "seed": 1}, f)
    metrics = os.path.join(tmp, f"{name}.jsonl")
    cmd = [os.path.join(ROOT, ".venv", "bin", "torchrun"), "--standalone", "--nproc_per_node", str(WORLD), "--no-python",
           os.path.join(BUILD, "autotp"), "train", "--config", cfg, "--model", MODEL, "--data", os.path.join(tmp, "data.tokens"),
           "--steps", str(STEPS), "--seq", str(SEQ), "--metrics", metrics, "--quiet"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [json.loads(line) for line in open(metrics)]


def per_step(rows, group, key="bytes"):
    return (rows[-1]["collectives"][group][key] - rows[0]["collectives"][group][key]) / (len(rows) - 1)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "tokenize_data.py"), "--synthetic", "32000",
                        "--tokens", "20000", "--out", os.path.join(tmp, "data.tokens")], check=True, stdout=subprocess.DEVNULL)
        jobs = {tp: run(tmp, tp) for tp in (2, 1)}
        overlapped = run(tmp, 1, overlap=True)
    times = {tp: statistics.median(r["seconds"] for r in rows[1:]) for tp, rows in jobs.items()}
    t_overlap = statistics.median(r["seconds"] for r in overlapped[1:])
    print(f"model {os.path.basename(MODEL)}, {WORLD} processes, {STEPS - 1} measured steps, micro-batch 1 x {SEQ} tokens, fp32")
    for tp, rows in jobs.items():
        dp = WORLD // tp
        last = rows[-1]
        dp_payload = per_step(rows, "dp")
        # payload = RS input (dp*part*4) + AG input (part*4) + 16 B of norm/loss scalars
        part_bytes = (dp_payload - 16) / (dp + 1)
        wire = (dp - 1) / dp * (dp * part_bytes + dp * part_bytes)
        grad_bytes = last["grad_bytes"]
        formula = 2 * (dp - 1) / dp * grad_bytes
        print(f"tp {tp} x dp {dp}: step {times[tp] * 1e3:.0f} ms (median), tp bytes/step {per_step(rows, 'tp') / 2**20:.2f} MiB, "
              f"dp payload/step {dp_payload / 2**20:.2f} MiB, dp ring wire/step {wire / 2**20:.2f} MiB vs "
              f"2(dp-1)/dp x grad bytes {formula / 2**20:.2f} MiB (ratio {wire / formula:.4f}), "
              f"params {last['param_bytes'] / 2**20:.1f} MiB, optimizer {last['optimizer_bytes'] / 2**20:.1f} MiB per rank")
    print(f"step time ratio AutoTP(2)+ZeRO-1 / DP(4) ZeRO-1: {times[2] / times[1]:.3f}")
    print(f"DP(4) ZeRO-1 with overlap_comm (reduce buckets of 2M elements during backward): step {t_overlap * 1e3:.0f} ms "
          f"(median), dp payload/step {per_step(overlapped, 'dp') / 2**20:.2f} MiB in {per_step(overlapped, 'dp', 'calls'):.0f} calls "
          f"(without: {per_step(jobs[1], 'dp', 'calls'):.0f}); ratio overlap / one reduce-scatter: {t_overlap / times[1]:.3f}")


if __name__ == "__main__":
    main()

"""autotp's step time against DeepSpeed's AutoTP + ZeRO-1 on the same model and batches (make bench).

The case of issue 15: a Llama of hidden 512, 4 layers (8 heads, intermediate 1376, vocabulary 4096,
random weights, seed 0), seq 128, global batch 8, 2 processes, AutoTP(2) + ZeRO-1, fp32, through
benchmarks/compare.py's two rows `autotp-tp2` and `ds-autotp2` (same weights, same token file, same
samples per step, both checked against the single-process reference), repetitions interleaved.
Prints the median step time of each and the ratio autotp / DeepSpeed (below 1: autotp is faster).
"""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.environ.get("BUILD", os.path.join(ROOT, "build"))
MID = dict(vocab_size=4096, hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
           num_key_value_heads=8, max_position_embeddings=256, tie_word_embeddings=False)


def main():
    import torch
    import transformers
    out = os.path.join(BUILD, "bench_vs_deepspeed")
    folder = os.path.join(out, "model", "llama_h512_l4")  # compare.py works in out/llama_h512_l4
    if not os.path.exists(os.path.join(folder, "config.json")):
        torch.manual_seed(0)
        transformers.LlamaForCausalLM(transformers.LlamaConfig(**MID)).save_pretrained(folder)
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    cmd = [sys.executable, os.path.join(HERE, "compare.py"), "--model", folder, "--only", "autotp-tp2", "ds-autotp2",
           "--world", "2", "--steps", "6", "--reps", "3", "--seq", "128", "--global-batch", "8", "--out", out,
           "--autotp", os.path.join(BUILD, "autotp")]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, os.path.basename(folder), "compare.json")) as f:
        rows = {r["key"]: r for r in json.load(f)["rows"]}
    a, d = rows["autotp-tp2"], rows["ds-autotp2"]
    for r in (a, d):
        if r["error"]:
            sys.exit(f"bench_vs_deepspeed: {r['label']} failed: {r['error']}")
    print(f"hidden 512 x 4 layers, seq 128, global batch 8, 2 processes, AutoTP(2)+ZeRO-1, fp32, 5 measured steps x 3 reps")
    print(f"  autotp     median step {a['step_seconds'] * 1e3:7.1f} ms  (loss vs reference {a['loss_rel_err']:.1e})")
    print(f"  DeepSpeed  median step {d['step_seconds'] * 1e3:7.1f} ms  (loss vs reference {d['loss_rel_err']:.1e})")
    print(f"  autotp / DeepSpeed step time: {a['step_seconds'] / d['step_seconds']:.3f}")


if __name__ == "__main__":
    main()

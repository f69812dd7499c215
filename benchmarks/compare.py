#!/usr/bin/env python3
"""Can AutoTP + ZeRO-1 replace ZeRO-3? One run, measured (make compare; not part of make test).

  .venv/bin/python benchmarks/compare.py [--model tiny|smollm2|HF_DIR] [--world 4] [--steps N] [--reps R] [--quick]

One model (a Hugging Face Llama, saved once with save_pretrained to OUT/<name>/model_hf; autotp gets
it traced by scripts/export_hf.py's code from those same weights), one token file (a v1 synthetic
stream), one optimizer setting (AdamW fp32, constant lr, betas, eps, weight_decay 0.0 -- so that
autotp's "no decay on 1-D parameters" and DeepSpeed's single param group mean the same --
gradient_clipping 1.0), one world size (torchrun, gloo on CPU, NCCL when GPUs are present). Rows:
  autotp       AutoTP(t)+ZeRO-1 (`autotp train --no-shuffle`) for every valid t dividing the world
  ds-autotp    DeepSpeed AutoTP(t)+ZeRO-1 ("tensor_parallel": {"autotp_size": t}), t > 1
  ds-zero1/2/3 DeepSpeed ZeRO stage 1, 2, 3 (data parallel)
  fsdp2        PyTorch fully_shard (ZeRO-3 semantics)
  ddp          PyTorch DistributedDataParallel
Every row reads the same global batch per step (global positions as autotp reads them; micro-batch =
global batch / dp) and is checked against `ref`, the same HF model trained in one process on the
whole global batch (torch.optim.AdamW, clip_grad_norm_): worst relative loss and grad-norm difference.
Repetitions are interleaved across rows (rep 1 of every row, then rep 2, ...); step time is the median
over reps of each run's median step after the first. Model-state bytes are rank 0's, from each
system's own accounting; peak memory is the max over ranks of the process high-water mark (ru_maxrss)
on CPU, max_memory_allocated on GPU. Bytes per step per group are payload bytes a rank submits
(numel x element size: all-reduce input, reduce-scatter input, all-gather input), autotp's own
counting convention; the analytic formulas are in compare_report.py.
Writes OUT/compare.md, compare.json, memory_per_rank.png, bytes_per_step.png, step_time.png.
--quick: 2 processes, 2 steps, a tiny model, one repetition; exits 1 if any row fails or disagrees.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

TINY = dict(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
            num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=False)
QUICK = dict(TINY, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2)


def prepare_model(a, work):
    """OUT/<name>/model_hf (the weights every row loads) and model.pt (the trace autotp trains)."""
    import torch
    import transformers
    from export_hf import attach_hf_files, hf_files_of, trace
    hf_dir = os.path.join(work, "model_hf")
    if a.model in ("tiny", "quick"):
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**(QUICK if a.quick else TINY)))
        model.save_pretrained(hf_dir)
    elif a.model == "smollm2":
        sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
        from make_fixtures import smollm2_gguf
        folder, gguf = smollm2_gguf()
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, torch_dtype=torch.float32)
        model.save_pretrained(hf_dir)
    else:
        hf_dir = os.path.abspath(a.model)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        hf_dir, torch_dtype=torch.float32, attn_implementation="eager", return_dict=False, use_cache=False)
    pt = os.path.join(work, "model.pt")
    attach_hf_files(trace(model, model.config.vocab_size), hf_files_of(hf_dir)).save(pt)
    c = model.config
    info = dict(vocab=c.vocab_size, hidden=c.hidden_size, layers=c.num_hidden_layers, heads=c.num_attention_heads,
                kv_heads=c.num_key_value_heads, intermediate=c.intermediate_size,
                tied=bool(c.tie_word_embeddings), params=sum(p.numel() for p in model.parameters()))
    return hf_dir, pt, info


def prepare(a, work):
    os.makedirs(work, exist_ok=True)
    hf_dir, pt, info = prepare_model(a, work)
    data = os.path.join(work, "data.tokens")
    need = a.steps * a.global_batch * a.seq + 1
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "tokenize_data.py"), "--synthetic", str(info["vocab"]),
                    "--tokens", str(max(need, 20000)), "--out", data], check=True, stdout=subprocess.DEVNULL)
    plan = json.loads(subprocess.run([a.autotp, "inspect", pt, "--json", "--tp", "1"], check=True,
                                     capture_output=True, text=True).stdout)
    tps = [t for t in plan["valid_tp"] if a.world % t == 0 and a.global_batch % (a.world // t) == 0]
    configs = {}
    for t in tps:
        configs[str(t)] = os.path.join(work, f"autotp_tp{t}.json")
        with open(configs[str(t)], "w") as f:
            json.dump({"train_micro_batch_size_per_gpu": a.global_batch * t // a.world, "gradient_accumulation_steps": 1,
                       "optimizer": {"type": "AdamW", "params": {"lr": a.lr, "betas": [0.9, 0.999], "eps": 1e-8,
                                                                 "weight_decay": 0.0}},
                       "zero_optimization": {"stage": 1}, "tensor_parallel": {"autotp_size": t},
                       "gradient_clipping": 1.0, "steps_per_print": 10 ** 6, "seed": 1}, f, indent=1)
    spec = dict(model_hf=hf_dir, model_pt=pt, data=data, steps=a.steps, seq=a.seq, global_batch=a.global_batch,
                world=a.world, lr=a.lr, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0, clip=1.0,
                autotp=os.path.abspath(a.autotp), autotp_configs=configs, model_info=info, model_name=a.model,
                tp_bytes_per_rank={str(t): None for t in tps})
    for t in tps:  # the plan's parameter bytes per rank at each tp (for the analytic rows)
        p = json.loads(subprocess.run([a.autotp, "inspect", pt, "--json", "--tp", str(t)], check=True,
                                      capture_output=True, text=True).stdout)
        spec["tp_bytes_per_rank"][str(t)] = p["bytes"]["per_rank"]
    with open(os.path.join(work, "spec.json"), "w") as f:
        json.dump(spec, f, indent=1)
    return spec, tps


def rows_for(tps, world):
    rows = [dict(key=f"autotp-tp{t}", label=f"autotp AutoTP({t})+ZeRO-1", system="autotp", tp=t, stage=1) for t in tps]
    rows += [dict(key=f"ds-autotp{t}", label=f"DeepSpeed AutoTP({t})+ZeRO-1", system="deepspeed", tp=t, stage=1)
             for t in tps if t > 1]
    rows += [dict(key=f"ds-zero{s}", label=f"DeepSpeed ZeRO-{s}", system="deepspeed", tp=1, stage=s) for s in (1, 2, 3)]
    rows += [dict(key="fsdp2", label="PyTorch FSDP2", system="fsdp2", tp=1, stage=3),
             dict(key="ddp", label="PyTorch DDP", system="ddp", tp=1, stage=0)]
    for r in rows:
        r["dp"] = world // r["tp"]
    return rows


def launch(a, spec_path, row, prefix, log):
    env = dict(os.environ)
    import torch
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(a.world),
           os.path.join(HERE, "compare_worker.py"), spec_path, row["system"], "--tp", str(row["tp"]),
           "--stage", str(row["stage"]), "--out", prefix]
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=a.row_timeout).returncode
    if rc != 0:
        ranks, err = read_ranks(a, prefix)
        if ranks is not None:  # every rank wrote its results, then something failed on the way out
            print(f"  note: {row['label']}: exit status {rc} after every rank wrote its results ({log})", flush=True)
            return ranks, None
        lines = [line.strip() for line in open(log) if line.strip() and "Warning" not in line]
        errs = [line for line in lines if "Error" in line or "error" in line] or lines
        return None, (errs[-1] if errs else f"exit {rc}")[:300]
    return read_ranks(a, prefix)


def read_ranks(a, prefix):
    ranks = []
    for r in range(a.world):
        if not os.path.exists(f"{prefix}-rank{r}.json"):
            return None, f"no result from rank {r} ({prefix}.log)"
        with open(f"{prefix}-rank{r}.json") as f:
            ranks.append(json.load(f))
    return ranks, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny (a random Llama from a config), smollm2, or a HF folder")
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--global-batch", type=int, default=8, help="samples per step, all ranks together")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--only", nargs="*", help="row keys to run (default all)")
    ap.add_argument("--quick", action="store_true", help="2 processes, 2 steps, tiny model, 1 repetition")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "compare"))
    ap.add_argument("--autotp", default=os.path.join(ROOT, "build", "autotp"))
    ap.add_argument("--row-timeout", type=int, default=1800)
    ap.add_argument("--report-only", action="store_true",
                    help="rerun only the reference and rewrite the report from OUT/<model>/runs of an earlier run")
    a = ap.parse_args()
    if a.quick:
        a.world, a.steps, a.reps, a.seq, a.global_batch = 2, 2, 1, 32, 4
    name = "quick" if a.quick else (a.model if a.model in ("tiny", "smollm2") else os.path.basename(a.model.rstrip("/")))
    work = os.path.join(a.out, name)
    spec, tps = prepare(a, work)
    spec_path = os.path.join(work, "spec.json")
    rows = [r for r in rows_for(tps, a.world) if not a.only or r["key"] in a.only]
    runs = os.path.join(work, "runs")
    if not a.report_only:
        shutil.rmtree(runs, ignore_errors=True)
        os.makedirs(runs)
    print(f"compare: {name} ({spec['model_info']['params']} parameters), {a.world} processes, {a.steps} steps, "
          f"global batch {a.global_batch} x {a.seq} tokens, {a.reps} interleaved repetitions, {len(rows)} rows", flush=True)
    ref, err = launch_ref(spec_path, os.path.join(runs, "ref"))
    results = {r["key"]: dict(r, reps=[], error=None) for r in rows}
    for rep in range(a.reps):
        for row in rows:
            res = results[row["key"]]
            if res["error"]:
                continue
            prefix = os.path.join(runs, f"{row['key']}-rep{rep}")
            if a.report_only:
                if not os.path.exists(prefix + ".log"):
                    continue
                ranks, err = read_ranks(a, prefix)
            else:
                ranks, err = launch(a, spec_path, row, prefix, prefix + ".log")
            if err:
                res["error"] = err
                print(f"  rep {rep + 1} {row['label']}: FAILED: {err}", flush=True)
            else:
                res["reps"].append(ranks)
                print(f"  rep {rep + 1} {row['label']}: {[round(s['loss'], 6) for s in ranks[0]['steps']]}", flush=True)
    import compare_report
    ok = compare_report.write(a.out if name == "tiny" else work, spec, ref, list(results.values()), name)
    if a.quick and not ok:
        sys.exit(1)


def launch_ref(spec_path, prefix):
    subprocess.run([sys.executable, os.path.join(HERE, "compare_worker.py"), spec_path, "ref", "--out", prefix],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(prefix + "-rank0.json") as f:
        return json.load(f), None


if __name__ == "__main__":
    main()

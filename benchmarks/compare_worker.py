"""One rank of one row of benchmarks/compare.py (launched by torchrun; `ref` runs as one plain process).

  compare_worker.py SPEC.json SYSTEM [--tp T] [--stage S] --out OUT_PREFIX

SYSTEM: ref (one process, the whole global batch: the reference every row is checked against),
autotp (runs `autotp train` as a child of this process so that its peak memory can be read with
RUSAGE_CHILDREN; nothing heavy is imported here), deepspeed (--stage 1|2|3, --tp T for AutoTP(T)+ZeRO-1),
fsdp2, ddp (compare_peers.py). Each rank writes OUT_PREFIX-rank<r>.json: per-step loss, grad norm,
seconds and collective bytes per group, its model-state bytes and its peak memory.

Data: the v1 token file of runtime/token_data.h read exactly as `autotp train --no-shuffle` reads it:
sample i = tokens [i*S, i*S+S+1); DP rank j of step t (no accumulation) reads global positions
g = (t*dp + j)*micro + i, sample g mod samples. micro = global_batch / dp, so every row sees the same
global batch of samples [t*G, t*G+G) per step, whatever its dp.
Loss: mean next-token cross-entropy over the rank's micro-batch; with equal-length windows the mean of
the ranks' means is autotp's token-weighted mean over the global batch.
"""
import json
import os
import resource
import subprocess
import sys
import time


def peak_rss_bytes(who=resource.RUSAGE_SELF):
    return resource.getrusage(who).ru_maxrss * 1024  # Linux reports KiB


def run_autotp(spec, tp, out):
    """`autotp train` under this process: rank 0's --metrics gives loss, norm, bytes and collectives."""
    rank = int(os.environ.get("RANK", "0"))
    metrics = f"{out}-metrics.jsonl"
    cmd = [spec["autotp"], "train", "--config", spec["autotp_configs"][str(tp)], "--model", spec["model_pt"],
           "--data", spec["data"], "--steps", str(spec["steps"]), "--seq", str(spec["seq"]),
           "--micro-batch", str(spec["global_batch"] * tp // spec["world"]), "--no-shuffle", "--quiet",
           "--metrics", metrics]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if rank else None)
    result = {"rank": rank, "peak_bytes": peak_rss_bytes(resource.RUSAGE_CHILDREN), "peak_kind": "ru_maxrss (child)"}
    if rank == 0:
        rows = [json.loads(line) for line in open(metrics)]
        rows = [r for r in rows if "loss" in r]
        prev = {g: 0 for g in rows[0]["collectives"]}
        steps = []
        for r in rows:
            coll = {g: r["collectives"][g]["bytes"] - prev[g] for g in r["collectives"]}
            prev = {g: r["collectives"][g]["bytes"] for g in r["collectives"]}
            steps.append({"loss": r["loss"], "grad_norm": r["grad_norm"], "seconds": r["seconds"],
                          "bytes": {g: b for g, b in coll.items() if b}})
        last = rows[-1]
        result.update(steps=steps, state={"params": last["param_bytes"], "grads": last["grad_bytes"],
                                          "optimizer": last["optimizer_bytes"]})
    with open(f"{out}-rank{rank}.json", "w") as f:
        json.dump(result, f)


# ---- the Python rows: shared pieces -------------------------------------------------------------

class Counter:
    """Counts the payload bytes (numel x element size of what a rank submits, autotp's convention) of
    every torch.distributed collective, per group, while `on`. Installed before DeepSpeed / FSDP are
    imported, on both torch.distributed and distributed_c10d, so call-time lookups go through it."""
    NAMES = {"all_reduce": "tensor", "reduce": "tensor", "broadcast": "tensor", "all_gather": "tensor",
             "all_gather_into_tensor": "input_tensor", "all_gather_single": "input_tensor",
             "_all_gather_base": "input_tensor", "reduce_scatter_tensor": "input", "reduce_scatter_single": "input",
             "_reduce_scatter_base": "input", "reduce_scatter": "input_list", "all_to_all_single": "input"}

    def __init__(self, dist, tp):
        self.dist, self.tp, self.on, self.bytes, self.kinds, self.depth = dist, tp, False, {}, {}, 0
        import torch.distributed.distributed_c10d as c10d
        for name, arg in self.NAMES.items():
            orig = getattr(c10d, name, None)
            if orig is not None:
                wrapped = self._wrap(orig, arg, name)
                setattr(c10d, name, wrapped)
                setattr(dist, name, wrapped)

    def group_name(self, group):
        world = self.dist.get_world_size()
        ranks = list(range(world)) if group is None else self.dist.get_process_group_ranks(group)
        if len(ranks) == 1:
            return None
        if self.tp > 1 and len(ranks) == self.tp and ranks == list(range(ranks[0], ranks[0] + self.tp)):
            return "tp"
        if len(ranks) == world and self.tp > 1:
            return "world"
        return "dp"

    def add(self, group, nbytes, kind):
        name = self.group_name(group)
        if self.on and name:
            self.bytes[name] = self.bytes.get(name, 0) + nbytes
            self.kinds[f"{name} {kind}"] = self.kinds.get(f"{name} {kind}", 0) + nbytes

    def _wrap(self, orig, arg, kind):
        import inspect
        import torch
        sig = inspect.signature(orig)

        def size(x):
            if isinstance(x, torch.Tensor):
                return x.numel() * x.element_size()
            if isinstance(x, (list, tuple)):
                return sum(size(t) for t in x)
            return 0

        def wrapper(*args, **kwargs):
            if self.on and self.depth == 0:  # the outermost call only (deprecated names call the new ones)
                bound = sig.bind_partial(*args, **kwargs).arguments
                self.add(bound.get("group"), size(bound.get(arg)), kind)
            self.depth += 1
            try:
                return orig(*args, **kwargs)
            finally:
                self.depth -= 1
        return wrapper

    def take(self):
        out, kinds, self.bytes, self.kinds = self.bytes, self.kinds, {}, {}
        return out, kinds


def tokens(path):
    import numpy as np
    head = open(path, "rb").read(32)
    assert head[:8] == b"ATPTOKS1", f"{path}: not a v1 token stream"
    width = int.from_bytes(head[8:12], "little")
    count = int.from_bytes(head[16:24], "little")
    return np.memmap(path, dtype=np.uint16 if width == 2 else np.uint32, mode="r", offset=32, shape=(count,))


def batch(ids, step, dp, dp_rank, micro, seq):
    """This DP rank's micro-batch of step `step` (0-based), as `autotp train --no-shuffle` reads it."""
    import numpy as np
    import torch
    samples = (len(ids) - 1) // seq
    rows = []
    for i in range(micro):
        s = (((step * dp + dp_rank) * micro + i) % samples) * seq
        rows.append(np.asarray(ids[s:s + seq + 1], dtype=np.int64))
    t = torch.from_numpy(np.stack(rows))
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()


def load_hf(spec, device="cpu"):
    import torch
    import transformers
    return transformers.AutoModelForCausalLM.from_pretrained(
        spec["model_hf"], torch_dtype=torch.float32, attn_implementation="eager", use_cache=False).to(device)


def lm_loss(model, inp, labels):
    import torch
    logits = model(input_ids=inp).logits
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))


def adamw_args(spec):
    return dict(lr=spec["lr"], betas=tuple(spec["betas"]), eps=spec["eps"], weight_decay=spec["weight_decay"])


def nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def run_ref(spec, out):
    """One process, the whole global batch at once, torch.optim.AdamW + clip_grad_norm_."""
    import torch
    torch.manual_seed(0)
    model = load_hf(spec)
    opt = torch.optim.AdamW(model.parameters(), **adamw_args(spec))
    ids, steps = tokens(spec["data"]), []
    for step in range(spec["steps"]):
        inp, labels = batch(ids, step, 1, 0, spec["global_batch"], spec["seq"])
        t0 = time.perf_counter()
        loss = lm_loss(model, inp, labels)
        loss.backward()
        # fp64 norm too: torch's fp32 norm of one large gradient (the lm-head's) is off by ~1e-4 relative
        norm64 = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())).item()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), spec["clip"])
        opt.step()
        opt.zero_grad(set_to_none=False)
        steps.append({"loss": loss.item(), "grad_norm": norm.item(), "grad_norm_fp64": norm64, "seconds": time.perf_counter() - t0, "bytes": {}})
    state = {"params": nbytes(model.parameters()), "grads": nbytes(p.grad for p in model.parameters()),
             "optimizer": nbytes(v for s in opt.state.values() for v in s.values() if v.dim() > 0)}
    with open(f"{out}-rank0.json", "w") as f:
        json.dump({"rank": 0, "steps": steps, "state": state, "peak_bytes": peak_rss_bytes(),
                   "peak_kind": "ru_maxrss"}, f)


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("spec")
    ap.add_argument("system", choices=("ref", "autotp", "deepspeed", "fsdp2", "ddp"))
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--stage", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    with open(a.spec) as f:
        spec = json.load(f)
    if a.system == "autotp":
        return run_autotp(spec, a.tp, a.out)
    if a.system == "ref":
        return run_ref(spec, a.out)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import compare_peers
    compare_peers.run(spec, a.system, a.tp, a.stage, a.out)


if __name__ == "__main__":
    main()

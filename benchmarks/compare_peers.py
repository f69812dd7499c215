"""The peer rows of benchmarks/compare.py, one rank each (called by compare_worker.py under torchrun).

  deepspeed  deepspeed.initialize with ZeRO stage 1/2/3 (data parallel), or with
             "tensor_parallel": {"autotp_size": T} + stage 1 (DeepSpeed's AutoTP training);
             AdamW through "torch_adam" (torch.optim.AdamW inside DeepSpeed's ZeRO optimizer).
  fsdp2      torch.distributed.fsdp.fully_shard on every decoder layer and the root (ZeRO-3 semantics),
             torch.optim.AdamW, torch.nn.utils.clip_grad_norm_ on the DTensors.
  ddp        DistributedDataParallel (broadcast_buffers off: Llama's only buffer is the constant rotary
             inv_freq) with DDP's own allreduce_hook registered as a Python comm hook, so the bucket
             all-reduces pass through torch.distributed where the counter sees them.
Model-state bytes come from each system's own objects: DeepSpeed's ZeRO optimizer (fp32 master
partitions, the inner optimizer's moments, its gradient partitions), the DTensors' local shards (FSDP2),
the module's tensors (DDP). Measured after the last backward (gradients) and after the last step.
"""
import json
import os
import sys
import time

from compare_worker import Counter, adamw_args, batch, lm_loss, load_hf, nbytes, peak_rss_bytes, tokens


def rss_now():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def optimizer_state(opt):
    return [local(v) for s in opt.state.values() for v in s.values() if hasattr(v, "dim") and v.dim() > 0]


def build_deepspeed(spec, model, tp, stage, world, micro):
    import deepspeed
    deepspeed.init_distributed()  # torch.distributed is up already: DeepSpeed adopts it
    config = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": 1,
              "optimizer": {"type": "AdamW", "params": dict(adamw_args(spec), betas=list(spec["betas"]),
                                                           torch_adam=True, adam_w_mode=True)},
              "gradient_clipping": spec["clip"], "zero_optimization": {"stage": stage},
              "steps_per_print": 10 ** 9}
    if stage == 3:  # partition every parameter (the default 1e5 keeps tensors below 1e5 elements whole
        config["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # on every rank: most of a toy model)
    if tp > 1:
        config["tensor_parallel"] = {"autotp_size": tp}
    engine, opt, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)

    def state_grads():
        grads = [p.grad for p in engine.module.parameters()]
        avg = getattr(opt, "averaged_gradients", None)  # ZeRO-1/2: this rank's reduced partitions
        if isinstance(avg, dict) and stage < 3:  # ZeRO-3's are views of its flat buffer, counted below
            grads += [g for gs in avg.values() for g in (gs or [])]
        for name in ("grad_partitions_flat_buffer",):  # ZeRO-3: the flat buffer of gradient partitions
            if getattr(opt, name, None) is not None:
                grads.append(getattr(opt, name))
        return nbytes(grads)

    def state_rest():
        if stage == 3:
            params = nbytes(p.ds_tensor for p in engine.module.parameters())
            masters = getattr(opt, "fp32_partitioned_groups_flat", [])
        else:
            params = nbytes(engine.module.parameters())
            masters = getattr(opt, "single_partition_of_fp32_groups", [])
        inner = getattr(opt, "optimizer", opt)
        return {"params": params, "optimizer": nbytes(masters) + nbytes(optimizer_state(inner))}

    def step(inp, labels, last):
        loss = lm_loss(engine, inp, labels)
        engine.backward(loss)
        grads = state_grads() if last else None
        engine.step()
        norm = engine.get_global_grad_norm()
        return loss, float(norm) if norm is not None else None, grads
    return step, state_rest


def build_fsdp2(spec, model, device, world):
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(device.type, (world,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), **adamw_args(spec))

    def step(inp, labels, last):
        loss = lm_loss(model, inp, labels)
        loss.backward()
        grads = nbytes(local(p.grad) for p in model.parameters()) if last else None
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), spec["clip"])
        opt.step()
        opt.zero_grad()
        return loss, float(local(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)), grads

    def state():
        return {"params": nbytes(local(p) for p in model.parameters()), "optimizer": nbytes(optimizer_state(opt))}
    return step, state


def build_ddp(spec, model, device):
    import torch
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                  broadcast_buffers=False)
    ddp.register_comm_hook(None, default_hooks.allreduce_hook)
    opt = torch.optim.AdamW(ddp.parameters(), **adamw_args(spec))

    def step(inp, labels, last):
        loss = lm_loss(ddp, inp, labels)
        loss.backward()
        grads = nbytes(p.grad for p in model.parameters()) if last else None
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), spec["clip"])
        opt.step()
        opt.zero_grad()
        return loss, float(norm), grads

    def state():
        return {"params": nbytes(model.parameters()), "optimizer": nbytes(optimizer_state(opt))}
    return step, state


def run(spec, system, tp, stage, out):
    import torch
    import torch.distributed as dist
    counter = Counter(dist, tp)  # before DeepSpeed / FSDP bind anything
    gpu = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if gpu else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dp, dp_rank = world // tp, rank // tp  # TP groups are consecutive ranks (autotp's and DeepSpeed's mesh)
    micro = spec["global_batch"] // dp
    import transformers  # noqa: F401
    if system == "deepspeed":
        import deepspeed  # noqa: F401 (imported before the floor is read: it is part of the runtime)
    floor = rss_now()  # the runtime alone: Python, torch, transformers (DeepSpeed), the process group
    torch.manual_seed(0)
    model = load_hf(spec, device)
    if system == "deepspeed":
        step, state = build_deepspeed(spec, model, tp, stage, world, micro)
    elif system == "fsdp2":
        step, state = build_fsdp2(spec, model, device, world)
    else:
        step, state = build_ddp(spec, model, device)
    ids, steps, grads = tokens(spec["data"]), [], None
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    for t in range(spec["steps"]):
        inp, labels = (x.to(device) for x in batch(ids, t, dp, dp_rank, micro, spec["seq"]))
        sync()
        counter.on = True
        t0 = time.perf_counter()
        loss, norm, g = step(inp, labels, t == spec["steps"] - 1)
        sync()
        seconds = time.perf_counter() - t0
        counter.on = False
        grads = g if g is not None else grads
        coll, kinds = counter.take()
        total = loss.detach().clone()
        dist.all_reduce(total)  # not counted: the mean of the ranks' means, for the report
        steps.append({"loss": total.item() / world, "grad_norm": norm, "seconds": seconds, "bytes": coll,
                      "by_kind": kinds})
    result = {"rank": rank, "steps": steps, "state": dict(state(), grads=grads),
              "peak_bytes": torch.cuda.max_memory_allocated(device) if gpu else peak_rss_bytes(),
              "peak_kind": "max_memory_allocated" if gpu else "ru_maxrss", "floor_bytes": 0 if gpu else floor}
    with open(f"{out}-rank{rank}.json", "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()
    # Leave without the interpreter's teardown: DDP's reducer threads have aborted it ("terminate called
    # without an active exception") once in ~30 runs here, after the results were written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

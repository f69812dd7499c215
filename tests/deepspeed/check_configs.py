"""The shipped configs through DeepSpeed's own config classes, against `autotp check --json`.

For each (config, world size): DeepSpeedConfig is built with an mpu whose data-parallel size is
world / autotp_size (how DeepSpeed learns dp when TP groups exist) and autotp resolves the same file
at that world size. Every value autotp implements must be what DeepSpeed reads: batch sizes,
optimizer type and params, scheduler type and params, clipping, bf16, ZeRO stage, autotp_size.
Usage: check_configs.py AUTOTP_CLI CONFIG:WORLD...; exit 0 when all agree, else one line per mismatch.
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ds_config import deepspeed_config  # noqa: E402

import deepspeed  # noqa: E402


def main():
    cli, cases = sys.argv[1], sys.argv[2:]
    problems = []
    for case in cases:
        path, world = case.rsplit(":", 1)
        ours = json.loads(subprocess.run([cli, "check", path, "--world-size", world, "--json"], check=True,
                                         capture_output=True, text=True).stdout)
        tp = ours["tensor_parallel"]["autotp_size"]
        ds = deepspeed_config(path, int(world) // tp)
        pairs = {
            "train_batch_size": (ds.train_batch_size, ours["train_batch_size"]),
            "train_micro_batch_size_per_gpu": (ds.train_micro_batch_size_per_gpu, ours["train_micro_batch_size_per_gpu"]),
            "gradient_accumulation_steps": (ds.gradient_accumulation_steps, ours["gradient_accumulation_steps"]),
            "optimizer.type": (ds.optimizer_name, ours["optimizer"]["type"].lower()),
            "scheduler.type": (ds.scheduler_name, ours.get("scheduler", {}).get("type")),
            "gradient_clipping": (ds.gradient_clipping, ours["gradient_clipping"]),
            "bf16.enabled": (ds.bfloat16_config.enabled, ours["bf16"]["enabled"]),
            "zero_optimization.stage": (ds.zero_optimization_stage, ours["zero_optimization"]["stage"]),
            "tensor_parallel.autotp_size": (ds.tensor_parallel_config.autotp_size, tp),
        }
        for key, value in ours["optimizer"]["params"].items():
            pairs[f"optimizer.params.{key}"] = (ds.optimizer_params.get(key), value)
        for key, value in ours.get("scheduler", {}).get("params", {}).items():
            if key in ds.scheduler_params:  # autotp writes DeepSpeed's defaults out; DeepSpeed keeps what was written
                pairs[f"scheduler.params.{key}"] = (ds.scheduler_params[key], value)
        for key, (theirs, mine) in pairs.items():
            if isinstance(theirs, (list, tuple)):
                theirs, mine = list(theirs), list(mine)
            if theirs != mine:
                problems.append(f"{path} at world {world}: {key}: DeepSpeed reads {theirs!r}, autotp {mine!r}")
        print(f"{os.path.basename(path)} world {world}: {len(pairs)} values agree with DeepSpeed {deepspeed.__version__}"
              if not any(p.startswith(path + " at world " + world) for p in problems) else f"{path}: MISMATCH")
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

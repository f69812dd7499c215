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

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed  # noqa: E402
from deepspeed.runtime.config import DeepSpeedConfig  # noqa: E402


class RankZeroBackend:
    def is_initialized(self):
        return True

    def get_rank(self, group=None):
        return 0

    def get_world_size(self, group=None):
        return 1


class Mpu:
    """What DeepSpeedConfig asks an mpu for: the data-parallel world size."""

    def __init__(self, dp):
        self.dp = dp

    def get_data_parallel_world_size(self):
        return self.dp


def main():
    cli, cases = sys.argv[1], sys.argv[2:]
    # DeepSpeedConfig asks the comm backend for this process's rank and the mpu for dp. A real
    # deepspeed.init_distributed on the CPU accelerator JIT-compiles a shared-memory op first (slow,
    # and nothing here communicates), so the backend is one that answers rank 0 of 1.
    import deepspeed.comm.comm as ds_comm
    ds_comm.cdb = RankZeroBackend()
    problems = []
    for case in cases:
        path, world = case.rsplit(":", 1)
        ours = json.loads(subprocess.run([cli, "check", path, "--world-size", world, "--json"], check=True,
                                         capture_output=True, text=True).stdout)
        tp = ours["tensor_parallel"]["autotp_size"]
        ds = DeepSpeedConfig(path, mpu=Mpu(int(world) // tp))
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

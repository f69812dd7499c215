"""The learning rate of each optimizer step, from DeepSpeed's own scheduler classes.

Reads CONFIG with DeepSpeed's DeepSpeedConfig (hjson, so // comments are fine), builds the scheduler
it names from deepspeed.runtime.lr_schedules exactly as DeepSpeedEngine._scheduler_from_config does
(the class called with the optimizer and **scheduler.params), on a torch optimizer holding
optimizer.params.lr, and replays DeepSpeedEngine._take_model_step's order: optimizer.step() with
the lr the param group holds, then lr_scheduler.step(). So the first step runs with the lr the
scheduler set at construction (last_batch_iteration -1), step n with last_batch_iteration n - 2.
Usage: lr_schedule.py STEPS CONFIG[:DP]...; DP (default 1) only feeds DeepSpeedConfig's batch arithmetic.
Prints, as its last stdout line (DeepSpeed's logger writes to stdout too), one JSON object mapping each
CONFIG[:DP] argument as given to the list of its STEPS learning rates, those of steps 1..STEPS. The
training tests' reference reads it instead of autotp's own lr_for_update.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ds_config import deepspeed_config  # noqa: E402

import torch  # noqa: E402
from deepspeed.runtime import lr_schedules  # noqa: E402


def lrs(config_path, steps, dp):
    """The lr of optimizer steps 1..steps under the config's scheduler, as DeepSpeed's engine runs it."""
    ds = deepspeed_config(config_path, dp)
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=ds.optimizer_params["lr"])
    if ds.scheduler_name is None:
        return [optimizer.param_groups[0]["lr"]] * steps  # no scheduler: the optimizer's lr throughout
    scheduler = getattr(lr_schedules, ds.scheduler_name)(optimizer, **ds.scheduler_params)
    out = []
    for _ in range(steps):
        out.append(float(optimizer.param_groups[0]["lr"]))  # what optimizer.step() would use
        scheduler.step()  # after the optimizer step, as the engine does
    return out


def main():
    steps, out = int(sys.argv[1]), {}
    for case in sys.argv[2:]:
        path, dp = case, 1
        head, _, tail = case.rpartition(":")
        if tail.isdigit():
            path, dp = head, int(tail)
        out[case] = lrs(path, steps, dp)
    print(json.dumps(out))  # repr floats: the C++ side reads back the exact doubles


if __name__ == "__main__":
    main()

"""DeepSpeed's own config class, loaded the way the engine would for one process of a dp-wide group.

DeepSpeedConfig asks the comm backend for this process's rank and the mpu for dp. A real
deepspeed.init_distributed on the CPU accelerator JIT-compiles a shared-memory op first (slow, and
nothing here communicates), so the backend is one that answers rank 0 of 1. Used by check_configs.py
and lr_schedule.py.
"""
import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from deepspeed.runtime.config import DeepSpeedConfig  # noqa: E402


class RankZeroBackend:
    def is_initialized(self):
        return True

    def get_rank(self, group=None):
        return 0

    def get_world_size(self, group=None):
        return 1


class Mpu:
    """What DeepSpeedConfig asks an mpu for: the data-parallel world size (its batch arithmetic)."""

    def __init__(self, dp):
        self.dp = dp

    def get_data_parallel_world_size(self):
        return self.dp


def deepspeed_config(path, dp):
    import deepspeed.comm.comm as ds_comm
    ds_comm.cdb = RankZeroBackend()
    return DeepSpeedConfig(path, mpu=Mpu(dp))

"""`autotp check --hf-args` against transformers' own DeepSpeed integration, value by value.

For each case YAML,DS.json,WORLD[,DATA.tokens]:
  - transformers' side: TrainingArguments from the YAML's TrainingArguments keys (the LLaMA-Factory
    keys are dropped, as its parser hands them to other dataclasses), then
    HfTrainerDeepSpeedConfig(DS).trainer_config_process(args) and trainer_config_finalize(args, model,
    num_training_steps), with args.world_size = WORLD. num_training_steps is
    Trainer.set_initial_training_values over a loader as long as accelerate's BatchSamplerShard makes
    it for one of dp = WORLD / autotp_size ranks from the token file's examples (or max_steps).
    A DS file without an optimizer section gets the Trainer's own (Trainer.get_optimizer_cls_and_kwargs).
  - autotp's side: `autotp check --config DS --hf-args YAML --world-size WORLD [--data DATA] --json`.
Every value transformers resolved must be the value autotp resolved: batch sizes (train_batch_size:
transformers' count is world × micro × GA, autotp's distinct samples micro × GA × dp, so
transformers' = autotp's × autotp_size), clipping, optimizer type and params, scheduler type and
params, bf16.enabled, fp16.enabled (transformers' must be false: autotp accepts only false).
The filled config must also load in DeepSpeed's own DeepSpeedConfig (world ranks, no mpu, as the
Trainer hands it over). A case whose transformers side raises the mismatch ValueError must fail in autotp with one line per
mismatched key, naming the key and the TrainingArguments key.
Usage: hf_auto.py AUTOTP_CLI CASE...; prints one line per case, exit 1 with one line per problem.
"""
import dataclasses
import json
import os
import re
import struct
import subprocess
import sys
from types import SimpleNamespace

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import yaml  # noqa: E402
import transformers  # noqa: E402
from accelerate.data_loader import BatchSamplerShard  # noqa: E402
from torch.utils.data import BatchSampler, SequentialSampler  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402
from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ds_config import deepspeed_config  # noqa: E402


class WorldArgs:
    """TrainingArguments as one process of a WORLD-rank run sees them (world_size is read from torch.distributed)."""

    def __init__(self, args, world):
        self._args, self.world_size = args, world

    def __getattr__(self, name):
        return getattr(self._args, name)


def examples_in(path):
    """Examples in a version-2 token file (runtime/token_data.h: E at offset 40, flag bit 1)."""
    with open(path, "rb") as f:
        head = f.read(48)
    assert head[:8] == b"ATPTOKS2" and struct.unpack_from("<I", head, 12)[0] & 2, f"{path}: not a v2 examples file"
    return struct.unpack_from("<Q", head, 40)[0]


def training_args(yaml_path):
    with open(yaml_path) as f:
        raw = yaml.safe_load(f)
    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    kept = {k: v for k, v in raw.items() if k in known and k != "deepspeed"}  # deepspeed: processed below
    kept.setdefault("output_dir", "/tmp/autotp_hf_auto")
    return TrainingArguments(**kept)


def num_training_steps(args, samples, dp):
    fake = SimpleNamespace(num_examples=lambda loader: samples)
    if samples is None:
        loader = object()  # no length: the Trainer needs max_steps
    else:
        batches = BatchSampler(SequentialSampler(range(samples)), args.per_device_train_batch_size, args.dataloader_drop_last)
        loader = range(len(BatchSamplerShard(batches, num_processes=dp, process_index=0, even_batches=True)))
    total = args.per_device_train_batch_size * args.gradient_accumulation_steps * dp
    return Trainer.set_initial_training_values(fake, args, loader, total)[6]


def transformers_side(yaml_path, ds_path, world, data):
    args = training_args(yaml_path)
    with open(ds_path) as f:
        ds = json.load(f)
    tp = max(1, ds.get("tensor_parallel", {}).get("autotp_size", 1))
    steps = num_training_steps(args, examples_in(data) if data else None, world // tp)
    hf = HfTrainerDeepSpeedConfig(ds)
    wargs = WorldArgs(args, world)
    hf.trainer_config_process(wargs, auto_find_batch_size=args.auto_find_batch_size)
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=64))
    try:
        hf.trainer_config_finalize(wargs, model, steps)
    except ValueError as e:
        return None, re.findall(r"^- ds (\S+)=.* vs hf (.+)=", str(e), re.M), tp, args
    c = hf.config
    # What the Trainer then hands DeepSpeed loads there (no TP-aware mpu on that path: dp = world).
    deepspeed_config(json.loads(json.dumps(c)), world)
    if "optimizer" not in c:  # the Trainer builds its own: torch AdamW with these kwargs
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
        c["optimizer"] = {"type": cls.__name__, "params": {"lr": kwargs["lr"], "betas": list(kwargs["betas"]),
                                                           "eps": kwargs["eps"], "weight_decay": args.weight_decay}}
    return c, [], tp, args


def autotp_side(cli, yaml_path, ds_path, world, data):
    cmd = [cli, "check", "--config", ds_path, "--hf-args", yaml_path, "--world-size", str(world), "--json"]
    if data:
        cmd += ["--data", data]
    return subprocess.run(cmd, capture_output=True, text=True)


def compare(name, hf, ours, tp):
    pairs = {
        "train_micro_batch_size_per_gpu": (hf["train_micro_batch_size_per_gpu"], ours["train_micro_batch_size_per_gpu"]),
        "gradient_accumulation_steps": (hf["gradient_accumulation_steps"], ours["gradient_accumulation_steps"]),
        "train_batch_size (autotp's × autotp_size)": (hf["train_batch_size"], ours["train_batch_size"] * tp),
        "gradient_clipping": (hf["gradient_clipping"], ours["gradient_clipping"]),
        "bf16.enabled": (hf["bf16"]["enabled"], ours["bf16"]["enabled"]),
        "fp16.enabled": (hf.get("fp16", {}).get("enabled", False), False),
        "optimizer.type": (hf["optimizer"]["type"].lower(), ours["optimizer"]["type"].lower()),
        "zero_optimization.stage": (hf["zero_optimization"]["stage"], ours["zero_optimization"]["stage"]),
    }
    for key, value in hf["optimizer"]["params"].items():
        pairs[f"optimizer.params.{key}"] = (value, ours["optimizer"]["params"].get(key))
    if "scheduler" in hf:
        pairs["scheduler.type"] = (hf["scheduler"]["type"], ours.get("scheduler", {}).get("type"))
        for key, value in hf["scheduler"].get("params", {}).items():
            pairs[f"scheduler.params.{key}"] = (value, ours["scheduler"]["params"].get(key))
    else:
        pairs["scheduler (none: constant lr)"] = (None, ours.get("scheduler"))
    problems = []
    for key, (theirs, mine) in pairs.items():
        if isinstance(theirs, (list, tuple)):
            theirs, mine = list(theirs), list(mine or [])
        if theirs == "auto" or theirs != mine:
            problems.append(f"{name}: {key}: transformers resolves {theirs!r}, autotp {mine!r}")
    return len(pairs), problems


def main():
    cli, cases = sys.argv[1], sys.argv[2:]
    problems = []
    for case in cases:
        yaml_path, ds_path, world, *rest = case.split(",")
        world, data = int(world), (rest[0] if rest else None)
        name = f"{os.path.basename(yaml_path)} + {os.path.basename(ds_path)} at world {world}"
        hf, mismatches, tp, args = transformers_side(yaml_path, ds_path, world, data)
        run = autotp_side(cli, yaml_path, ds_path, world, data)
        if hf is None:  # transformers refuses: autotp must refuse the same keys
            before = len(problems)
            lines = run.stderr.strip().splitlines()
            mine = [line for line in lines if re.match(r"^\S+: \S+: ", line)]
            if run.returncode != 1:
                problems.append(f"{name}: transformers refuses {len(mismatches)} mismatches, autotp exits {run.returncode}")
            for key, hf_key in mismatches:
                hits = [line for line in mine if f": {key}: " in line and re.split(r"[+|( ]", hf_key)[0] in line]
                if len(hits) != 1:
                    problems.append(f"{name}: {key} (vs {hf_key}): {len(hits)} matching autotp lines in:\n{run.stderr}")
            if len(mine) != len(mismatches):
                problems.append(f"{name}: transformers lists {len(mismatches)} mismatches, autotp {len(mine)}:\n{run.stderr}")
            print(f"{name}: the same {len(mismatches)} mismatches refused by transformers {transformers.__version__} and autotp"
                  if len(problems) == before else f"{name}: MISMATCH")
            continue
        if run.returncode != 0:
            problems.append(f"{name}: autotp check failed: {run.stderr.strip()}")
            continue
        count, bad = compare(name, hf, json.loads(run.stdout), tp)
        problems += bad
        print(f"{name}: {count} values agree with transformers {transformers.__version__}" if not bad else f"{name}: MISMATCH")
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

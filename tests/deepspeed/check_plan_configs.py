"""What `autotp plan --emit-deepspeed/--emit-llamafactory` wrote, read by the tools that will run it.

Each DS.json:DP is built with DeepSpeed's own DeepSpeedConfig (an mpu answering dp, as with TP groups)
and printed as `NAME: stage Z autotp_size T micro M ga G train_batch_size B`. Each YAML is parsed with
PyYAML and must hold only keys LLaMA-Factory reads (its examples/train_full/llama3_full_sft.yaml, and
ModelArguments.disable_gradient_checkpointing) with the types it expects.
Usage: check_plan_configs.py [DS.json:DP ...] [--yaml SFT.yaml ...]; exit 1 with one line per problem.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ds_config import deepspeed_config  # noqa: E402

import yaml  # noqa: E402

# LLaMA-Factory keys (hparams/model_args.py, data_args.py, finetuning_args.py, and the Hugging Face
# Seq2SeqTrainingArguments it extends), with the Python types its dataclasses declare.
LLAMAFACTORY_KEYS = {
    "model_name_or_path": str, "trust_remote_code": bool, "disable_gradient_checkpointing": bool, "flash_attn": str,
    "stage": str, "do_train": bool, "finetuning_type": str, "deepspeed": str,
    "dataset": str, "dataset_dir": str, "template": str, "cutoff_len": int, "max_samples": int, "overwrite_cache": bool,
    "preprocessing_num_workers": int, "dataloader_num_workers": int,
    "output_dir": str, "logging_steps": int, "save_steps": int, "plot_loss": bool, "overwrite_output_dir": bool,
    "save_only_model": bool, "report_to": str,
    "per_device_train_batch_size": int, "gradient_accumulation_steps": int, "learning_rate": float,
    "num_train_epochs": float, "max_steps": int, "lr_scheduler_type": str, "warmup_ratio": float, "warmup_steps": int,
    "bf16": bool,
    "ddp_timeout": int, "resume_from_checkpoint": str,
}


def main():
    args = sys.argv[1:]
    problems = []
    yamls = [args[i + 1] for i, a in enumerate(args) if a == "--yaml"]
    configs = [a for i, a in enumerate(args) if a != "--yaml" and (i == 0 or args[i - 1] != "--yaml")]
    for case in configs:
        path, dp = case.rsplit(":", 1)
        c = deepspeed_config(path, int(dp))
        print(f"{os.path.basename(path)}: stage {c.zero_optimization_stage} autotp_size {c.tensor_parallel_config.autotp_size} "
              f"micro {c.train_micro_batch_size_per_gpu} ga {c.gradient_accumulation_steps} "
              f"train_batch_size {c.train_batch_size} bf16 {c.bfloat16_config.enabled}")
    for path in yamls:
        with open(path) as f:
            doc = yaml.safe_load(f)
        for key, value in doc.items():
            if key not in LLAMAFACTORY_KEYS:
                problems.append(f"{path}: {key}: not a LLaMA-Factory key")
            elif not isinstance(value, LLAMAFACTORY_KEYS[key]) or (LLAMAFACTORY_KEYS[key] is int and isinstance(value, bool)):
                problems.append(f"{path}: {key}: {value!r} is not a {LLAMAFACTORY_KEYS[key].__name__}")
        print(f"{os.path.basename(path)}: {len(doc)} LLaMA-Factory keys: " + ", ".join(f"{k}={v}" for k, v in doc.items()))
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The README's architecture table, measured: for each zoo / style fixture, the valid tp, the share of
2-D weight bytes that is split, what stays replicated and why, and verify's worst errors at every valid
tp <= 4 (fp32, the fixture's trace shape).

Usage: scripts/zoo_table.py BUILD_DIR   (after `make build`; prints Markdown)
"""
import json
import re
import subprocess
import sys

NAMES = ["zoo_llama", "zoo_mistral", "zoo_mixtral", "zoo_qwen2", "zoo_qwen3", "zoo_gemma", "zoo_gemma2", "zoo_phi",
         "zoo_phi3", "zoo_olmo2", "zoo_stablelm", "zoo_cohere", "zoo_granite", "zoo_gpt_neox", "zoo_falcon", "zoo_gpt2",
         "zoo_opt", "zoo_gptj", "zoo_codegen", "zoo_starcoder2", "zoo_gpt_bigcode", "zoo_bloom",
         "style_nanogpt", "style_meta", "style_opaque", "llama_vocab251"]


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True)


def main(build):
    cli = f"{build}/autotp"
    print("| model | valid tp | 2-D weight bytes split | kept whole (why) | worst rel. error logits / loss / grads |")
    print("|---|---|---|---|---|")
    for name in NAMES:
        path = f"{build}/fixtures/{name}.pt"
        r = run([cli, "inspect", path, "--tp", "2", "--json"])
        if r.returncode:
            print(f"| {name} | refused | | {r.stderr.strip()} | |")
            continue
        plan = json.loads(r.stdout)
        mats = [p for p in plan["parameters"] if len(p["shape"]) == 2]
        split = sum(p["bytes"] for p in mats if p["placement"] != "replicated")
        whole = [p for p in mats if p["placement"] == "replicated"]
        why = "; ".join(sorted({re.sub(r" \(.*", "", p["reason"].split(": ", 1)[-1])[:70] for p in whole})) or "—"
        notes = [p["name"] for p in plan["parameters"] if p.get("padded")]
        if notes:
            why = (why if why != "—" else "") + f" vocabulary padded ({plan['sites']['vocab']} → multiple of tp)"
        errs = []
        for tp in [t for t in plan["valid_tp"] if 1 < t <= 4]:
            v = run([cli, "verify", path, "--tp", str(tp)])
            got = dict(re.findall(r"^\s+(logits|loss|grads)\s+max rel error (\S+)", v.stdout, re.M))
            errs.append(f"tp{tp}: {got.get('logits', '?')} / {got.get('loss', '?')} / {got.get('grads', '?')}"
                        + ("" if v.returncode == 0 else " FAIL"))
        share = 100.0 * split / max(1, sum(p["bytes"] for p in mats))
        print(f"| {name} | {', '.join(map(str, plan['valid_tp']))} | {share:.1f}% | {why} | {'<br>'.join(errs)} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build")

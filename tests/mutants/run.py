#!/usr/bin/env python3
"""make mutants: build the library with one deliberate fault at a time (AUTOTP_MUTANT=N, compiled into
the single file that holds it; see CMakeLists.txt) and run the tests meant to catch it. Every mutant
must make at least one test fail; the table says which tests caught which mutant.

Usage: tests/mutants/run.py [BUILD_DIR]   (default build-mutants; outside `make test`: it rebuilds)
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MUTANTS = [
    (1, "row-parallel bias dropped instead of added after the reduce", "Fixtures/VerifyFixture.*ref_bias*"),
    (2, "copy_to_tp backward skips its all-reduce", "Fixtures/VerifyFixture.*llama_gqa*:Collectives.*"),
    (3, "one rescaled size left unscaled", "Fixtures/VerifyFixture.*ref_script*"),
    (4, "ZeRO-1 forgets the 1/dp gradient mean", "Meshes/TrainMatchesReference.*dp2*"),
    (5, "decoupled weight decay applied twice", "Meshes/TrainMatchesReference.*tp1_dp1*"),
    (6, "replicated weight's TP gradient reduction skipped", "Soundness.PerHeadNorm*:Train.Qwen3*:Architectures/Zoo.*olmo2*"),
    (7, "an uneven cut's ranks all start at the first unit", "Fixtures/VerifyFixture.*_tp3:MergeRanks.BitExact*"),
    (8, "the holders of a kv head do not sum its gradient", "Fixtures/VerifyFixture.*mistral_tp4*:KvReplication.*"),
    (9, "a sum over the kv heads is replicated anyway", "KvReplication.ASumOverTheKvHeads*"),
]


def sh(cmd, **kw):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, **kw)


def build(build_dir, mutant):
    conf = sh(["cmake", "-S", ".", "-B", build_dir, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
               f"-DAUTOTP_MUTANT={mutant}"])
    if conf.returncode:
        sys.exit(conf.stdout + conf.stderr)
    b = sh(["cmake", "--build", build_dir, "-j", str(os.cpu_count() or 2), "--target", "autotp_cli", "autotp_tests"])
    if b.returncode:
        sys.exit(b.stdout[-4000:] + b.stderr[-4000:])


def failed_tests(build_dir, filt):
    r = sh([os.path.join(build_dir, "autotp_tests"), f"--gtest_filter={filt}"], timeout=1200)
    # "[  FAILED  ] Suite.Name/param, where GetParam() = ... (12 ms)"; skip the "N tests, listed below" summary.
    failed = [line.split("]", 1)[1].strip().split(" ")[0].rstrip(",") for line in r.stdout.splitlines()
              if line.startswith("[  FAILED  ]") and "listed below" not in line]
    return sorted(set(failed)), r.returncode


def main():
    build_dir = sys.argv[1] if len(sys.argv) > 1 else "build-mutants"
    rows, escaped = [], []
    try:
        for n, what, filt in MUTANTS:
            print(f"mutant {n}: {what} ...", flush=True)
            build(build_dir, n)
            failed, rc = failed_tests(build_dir, filt)
            rows.append((n, what, failed))
            if not failed:
                escaped.append(n)
    finally:
        build(build_dir, 0)  # leave the directory holding the real library
    lines = ["| mutant | fault | caught by |", "|---|---|---|"]
    for n, what, failed in rows:
        caught = ", ".join(failed[:4]) + (f" (+{len(failed) - 4} more)" if len(failed) > 4 else "") if failed else "**NOT CAUGHT**"
        lines.append(f"| {n} | {what} | {caught} |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(ROOT, build_dir, "mutants.md"), "w") as f:
        f.write(table + "\n")
    if escaped:
        sys.exit(f"mutants not caught by any test: {escaped}")
    print(f"all {len(rows)} mutants caught")


if __name__ == "__main__":
    main()

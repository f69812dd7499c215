"""compare.py's report: agreement with the reference, medians, analytic bytes, Markdown, JSON and charts.

Analytic payload per rank per step (bytes a rank submits, numel x 4 in fp32; P = parameter bytes a
rank holds before ZeRO partitioning: the whole model for data parallelism, P_t = the plan's bytes per
rank under AutoTP(t); k = the group's size; B = micro-batch per rank, S = sequence, H = hidden,
L = layers, V = vocabulary; act = B*S*H*4):
  DDP                     dp: all-reduce of the gradients               P
  ZeRO-1 / ZeRO-2         dp: reduce-scatter P + all-gather P/k          P + P/k
  ZeRO-3 / FSDP2          dp: all-gather P/k forward and again backward, reduce-scatter P: P + 2P/k
                          (FSDP2 keeps the root module's parameters -- embedding, final norm, lm-head --
                          gathered from forward to backward, so it gathers those once)
  autotp AutoTP(t)+ZeRO-1 tp: per layer 2 forward all-reduces (o_proj, down_proj) and 2 backward
                          (before q/k/v, before gate/up), plus the vocab-parallel embedding's forward
                          and the lm-head input's backward all-reduce: (4L + 2) act; the vocab-parallel
                          cross-entropy: 3 * B*S*4; dp: P_t + P_t/k (ZeRO-1 over P_t) + 16 (scalars)
  DeepSpeed AutoTP(t)+Z1  tp: per layer 2 forward all-reduces (o_proj, down_proj) and 5 backward, one per
                          column-parallel linear (q, k, v, gate, up: each all-reduces its own input's
                          gradient, where autotp's copy_to_tp reduces once per group sharing an input);
                          the lm-head column-parallel with its logits all-gathered (input B*S*V/t*4) and
                          its input's gradient all-reduced: (7L + 1) act + B*S*V/t*4 -- a lm-head tied to
                          the embedding stays whole, with neither: 7L act. The embedding stays
                          whole and needs no reduction (its gradient is already complete on every rank);
                          dp: P_t + P_t/k with P_t DeepSpeed's own parameter bytes per rank
Ring wire bytes each payload implies (what crosses one link): all-reduce of n: 2(k-1)/k n;
reduce-scatter of input n: (k-1)/k n; all-gather of input m: (k-1) m. So ZeRO-1/2 and DDP: 2(k-1)/k P,
ZeRO-3/FSDP2: 3(k-1)/k P, AutoTP(t): 2(t-1)/t x its tp payload + 2(k-1)/k P_t over dp.
"""
import json
import os
import statistics

MiB = 2 ** 20


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def analytic(row, spec, measured_params):
    m, G, S = spec["model_info"], spec["global_batch"], spec["seq"]
    dp, t = row["dp"], row["tp"]
    B = G // dp
    act = B * S * m["hidden"] * 4
    P = m["params"] * 4
    out, wire = {}, {}
    if row["system"] == "ddp":
        out["dp"], wire["dp"] = P, 2 * (dp - 1) / dp * P
    elif row["stage"] == 3:
        out["dp"], wire["dp"] = P + 2 * P / dp, 3 * (dp - 1) / dp * P
    else:
        Pt = P if t == 1 else (spec["tp_bytes_per_rank"][str(t)] if row["system"] == "autotp" else measured_params)
        if dp > 1:
            out["dp"] = Pt + Pt / dp + (16 if row["system"] == "autotp" else 0)
            wire["dp"] = 2 * (dp - 1) / dp * Pt
        if t > 1:
            if row["system"] == "autotp":
                out["tp"] = (4 * m["layers"] + 2) * act + 3 * B * S * 4
            else:
                out["tp"] = 7 * m["layers"] * act + (0 if m["tied"] else act + B * S * m["vocab"] // t * 4)
            wire["tp"] = 2 * (t - 1) / t * out["tp"]
    return out, wire


def summarize(res, spec, ref):
    if res["error"] or not res["reps"]:
        return dict(key=res["key"], label=res["label"], tp=res["tp"], dp=res["dp"], error=res["error"] or "no result")
    first = res["reps"][0]
    steps = first[0]["steps"]
    losses = [s["loss"] for s in steps]
    norms = [s["grad_norm"] for s in steps]
    loss_err = max(rel(a, b["loss"]) for a, b in zip(losses, ref["steps"]))
    norm_err = max((rel(a, b.get("grad_norm_fp64", b["grad_norm"])) for a, b in zip(norms, ref["steps"]) if a is not None),
                   default=None)
    times = [statistics.median([s["seconds"] for s in ranks[0]["steps"][1:]] or [ranks[0]["steps"][0]["seconds"]])
             for ranks in res["reps"]]
    later = steps[1:] or steps
    groups = sorted({g for s in later for g in s["bytes"]})
    measured = {g: statistics.median(s["bytes"].get(g, 0) for s in later) for g in groups}
    kinds = {}
    for s in later[-1:]:
        kinds = s.get("by_kind", {})
    state = first[0]["state"]
    ana, wire = analytic(res, spec, state.get("params"))
    return dict(key=res["key"], label=res["label"], tp=res["tp"], dp=res["dp"], error=None, losses=losses,
                grad_norms=norms, loss_rel_err=loss_err, grad_norm_rel_err=norm_err, step_seconds=statistics.median(times),
                step_seconds_reps=times, tokens_per_s=spec["global_batch"] * spec["seq"] / statistics.median(times),
                state=state, peak_bytes=max(r["peak_bytes"] for r in first),
                floor_bytes=max((r.get("floor_bytes") or 0) for r in first) or None, peak_kind=first[0]["peak_kind"],
                bytes_per_step=measured, bytes_by_kind=kinds, analytic_bytes=ana, analytic_ring_wire=wire)


def fmt_bytes(m, a):
    if m is None and a is None:
        return "—"
    ms = "—" if m is None else f"{m / MiB:.3f}"
    return f"{ms} ({a / MiB:.3f})" if a is not None else ms


def write(out_dir, spec, ref, results, name):
    rows = [summarize(r, spec, ref) for r in results]
    good = [r for r in rows if not r["error"]]
    autotp = [r for r in good if r["key"].startswith("autotp")]
    base = min(autotp, key=lambda r: r["step_seconds"]) if autotp else None
    m = spec["model_info"]
    lines = [f"### {name}: {m['params'] / 1e6:.2f}M parameters (hidden {m['hidden']}, {m['layers']} layers, "
             f"{m['heads']}/{m['kv_heads']} heads, vocab {m['vocab']}{', tied' if m['tied'] else ''}), "
             f"{spec['world']} processes, {spec['steps']} steps, global batch {spec['global_batch']} x {spec['seq']} tokens, "
             f"AdamW fp32 lr {spec['lr']} wd 0, clip 1.0", "",
             f"Reference: one process, whole global batch; losses {', '.join('%.4f' % s['loss'] for s in ref['steps'])}. "
             "Gradient norms are compared with the reference's norm summed in fp64 (its fp32 clip_grad_norm_ is "
             f"off by up to {max(rel(s['grad_norm'], s.get('grad_norm_fp64', s['grad_norm'])) for s in ref['steps']):.1e}). "
             f"Time ratio: to {base['label'] if base else '—'} (the fastest autotp row). "
             "Bytes per step: MiB a rank submits per step, measured (analytic); model state: rank 0, MiB; "
             "peak: max over ranks (the Python rows' resident memory before the model was loaded in brackets; "
             "autotp's is its C++ process).", "",
             "| row | tp×dp | loss rel. err (worst) | grad-norm rel. err (vs fp64) | step ms | tokens/s | time ÷ autotp | "
             "params | grads | optimizer | peak MiB (runtime floor) | dp MiB/step | tp MiB/step |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['label']} | {r['tp']}×{r['dp']} | failed: {r['error']} |" + " |" * 10)
            continue
        st = r["state"]
        ge = "—" if r["grad_norm_rel_err"] is None else f"{r['grad_norm_rel_err']:.1e}"
        lines.append(
            f"| {r['label']} | {r['tp']}×{r['dp']} | {r['loss_rel_err']:.1e} | {ge} | {r['step_seconds'] * 1e3:.1f} | "
            f"{r['tokens_per_s']:.0f} | {r['step_seconds'] / base['step_seconds']:.2f} | {st['params'] / MiB:.2f} | "
            f"{(st.get('grads') or 0) / MiB:.2f} | {st['optimizer'] / MiB:.2f} | {r['peak_bytes'] / MiB:.0f}"
            f"{'' if not r['floor_bytes'] else ' (%.0f)' % (r['floor_bytes'] / MiB)} | "
            f"{fmt_bytes(r['bytes_per_step'].get('dp'), r['analytic_bytes'].get('dp'))} | "
            f"{fmt_bytes(r['bytes_per_step'].get('tp'), r['analytic_bytes'].get('tp'))} |")
    worst = max(good, key=lambda r: r["loss_rel_err"]) if good else None
    ok = bool(good) and len(good) == len(rows) and worst["loss_rel_err"] <= 1e-4
    lines += ["", f"Worst loss disagreement with the reference: {worst['loss_rel_err']:.2e} ({worst['label']}); "
              f"tolerance 1e-4: {'ok' if ok else 'NOT MET'}." if worst else "No row ran."]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "compare.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out_dir, "compare.json"), "w") as f:
        json.dump({"spec": spec, "reference": ref, "rows": rows, "baseline": base["key"] if base else None,
                   "ok": ok}, f, indent=1)
    charts(out_dir, good)
    print("\n".join(lines))
    print(f"compare: wrote {out_dir}/compare.md, compare.json and charts")
    return ok


def charts(out_dir, rows):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("compare: matplotlib is not installed (pip install matplotlib); no charts")
        return
    labels = [r["label"].replace(" ", "\n").replace("+", "+\n") for r in rows]
    x = range(len(rows))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(16, 5))
    bottom = [0.0] * len(rows)
    for comp in ("params", "grads", "optimizer"):
        vals = [(r["state"].get(comp) or 0) / MiB for r in rows]
        a1.bar(x, vals, bottom=bottom, label=comp)
        bottom = [b + v for b, v in zip(bottom, vals)]
    a1.set_title("model state per rank (rank 0, each system's accounting)")
    a1.set_ylabel("MiB")
    a1.legend()
    a2.bar(x, [r["peak_bytes"] / MiB for r in rows], color="gray")
    a2.bar(x, [(r["floor_bytes"] or 0) / MiB for r in rows], color="silver", label="runtime floor (before the model)")
    a2.legend()
    a2.set_title("peak memory per rank (CPU: ru_maxrss, GPU: max_memory_allocated; max over ranks)", fontsize=9)
    a2.set_ylabel("MiB")
    for a in (a1, a2):
        a.set_xticks(list(x), labels, fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "memory_per_rank.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(12, 5))
    groups = ["dp", "tp", "world"]
    w = 0.27
    for i, g in enumerate(groups):
        meas = [r["bytes_per_step"].get(g, 0) / MiB for r in rows]
        if not any(meas):
            continue
        xs = [xi + (i - 1) * w for xi in x]
        ax.bar(xs, meas, w, label=f"{g} measured")
        ana = [(xi, r["analytic_bytes"][g] / MiB) for xi, r in zip(xs, rows) if g in r["analytic_bytes"]]
        ax.scatter([p[0] for p in ana], [p[1] for p in ana], color="black", marker="_", s=300, zorder=3)
    ax.scatter([], [], color="black", marker="_", label="analytic")
    ax.set_title("payload bytes per step per rank, by group")
    ax.set_ylabel("MiB")
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "bytes_per_step.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(12, 5))
    med = [r["step_seconds"] * 1e3 for r in rows]
    lo = [m - min(r["step_seconds_reps"]) * 1e3 for m, r in zip(med, rows)]
    hi = [max(r["step_seconds_reps"]) * 1e3 - m for m, r in zip(med, rows)]
    ax.bar(x, med, yerr=[lo, hi], capsize=4)
    ax.set_title("step time, median over interleaved repetitions (bars: min..max of the repetitions' medians)")
    ax.set_ylabel("ms")
    ax.set_xticks(list(x), labels, fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "step_time.png"), dpi=110)
    plt.close(fig)

"""The UNet benchmark's result as targets met or not, and as markdown tables.

* :data:`TARGETS`: the end-to-end ratios to plain each variant should stay within;
* :func:`check_targets`: each target against the medians measured, per frame count;
* :func:`format_report`: the whole result as markdown tables.
"""

from __future__ import annotations

from typing import Any

#: end-to-end ratios to plain each variant must stay within (time: at most this, or 1.0 within
#: half the IQR; memory: peak resident memory)
TARGETS = {
    "installed": {"time": 1.00, "identical": True},
    "record": {"time": 1.05, "memory": 1.10},
    "tar": {"time": 1.05},
    "identity": {"time": 1.00},
    "ones": {"time": 1.00},
}


def check_targets(result: dict[str, Any]) -> dict[str, Any]:
    """Each target (:data:`TARGETS`) against the medians measured, per frame count."""
    checks: dict[str, Any] = {}
    for f, entry in result.get("end_to_end", {}).items():
        for name, target in TARGETS.items():
            t = entry["time"].get(name)
            if t is None:
                continue
            c: dict[str, Any] = {
                "time_ratio": t["time_ratio"]["median"],
                "time_target": target["time"],
            }
            c["time_met"] = c["time_ratio"] <= max(target["time"], 1.0) + _noise(t)
            if "identical" in target:
                c["identical"] = t["identical"]
            mem = (entry.get("memory") or {}).get(name)
            if "memory" in target and mem is not None:
                c["peak_ratio"] = mem["peak_ratio"]["median"]
                c["delta_ratio"] = mem["delta_ratio"]["median"]
                c["memory_target"] = target["memory"]
                c["memory_met"] = c["peak_ratio"] <= target["memory"]
            checks[f"{name}@{f}"] = c
    return checks


def _noise(t: dict[str, Any]) -> float:
    """Half the IQR of the ratio: a 1.00x target is met if 1.00 is within the noise."""
    return t["time_ratio"]["iqr"] / 2


# ---------------------------------------------------------------------------------------
# report


def _fmt_ratio(s: dict[str, Any]) -> str:
    return f"{s['median']:.3f}x [{s['q1']:.3f}-{s['q3']:.3f}]"


def format_report(result: dict[str, Any]) -> str:
    """The results as markdown tables."""
    lines = [f"## attnlab bench: {result['config']}", ""]
    m = result["machine"]
    lines.append(
        f"{m.get('cpu', '?')}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, "
        f"torch {m['torch']}, device {m['device']}"
    )
    if "time_share" not in result:
        result = {**result, "flop_share": {}}
    lines += ["", "Temporal attention share of one UNet call (CFG batch 2):", ""]
    lines += [
        "| frames | FLOPs: temporal (transformer_in / level 0 / other) | wall time: temporal (transformer_in / level 0 / other) | UNet call |",
        "|---|---|---|---|",
    ]
    for f in result["flop_share"]:
        fs = result["flop_share"][f]
        ts = result.get("time_share", {}).get(f)
        tcol = (
            f"{ts['temporal']:.1%} ({ts['transformer_in']:.1%} / {ts['level0']:.1%} / {ts['other']:.1%})"
            if ts
            else "-"
        )
        call = f"{ts['unet_call_s']:.2f} s" if ts else "-"
        lines.append(
            f"| {f} | {fs['temporal']:.1%} ({fs['transformer_in']:.1%} / {fs['level0']:.1%} / {fs['other']:.1%}) | {tcol} | {call} |"
        )
    for f, entry in result.get("end_to_end", {}).items():
        lines += ["", f"End to end, {f} frames (ratio to plain: median [q1-q3] over rounds):", ""]
        mem = entry.get("memory")
        head = "| variant | time (median s) | time ratio | CPU time ratio | output vs plain |"
        sep = "|---|---|---|---|---|"
        if mem:
            head += " peak memory ratio | peak MiB | call's working memory ratio | working MiB |"
            sep += "---|---|---|---|"
        lines += [head, sep]
        for name, t in entry["time"].items():
            same = "identical" if t["identical"] else f"max diff {t['max_abs_diff']:.2g}"
            cpu_ratio = _fmt_ratio(t["cpu_ratio"]) if "cpu_ratio" in t else "-"
            row = f"| {name} | {t['time_s']['median']:.2f} | {_fmt_ratio(t['time_ratio'])} | {cpu_ratio} | {same} |"
            if mem:
                mm = mem[name]
                row += (
                    f" {_fmt_ratio(mm['peak_ratio'])} | {mm['peak_mib']['median']:.0f} |"
                    f" {_fmt_ratio(mm['delta_ratio'])} | {mm['delta_mib']['median']:.0f} |"
                )
            lines.append(row)
    micro = result.get("micro")
    if micro:
        for layer in micro["level0"]:
            lines += [
                "",
                f"One temporal attention layer, {layer['rows']} rows x {layer['frames']} frames x "
                f"{layer['channels']} channels ({layer['heads']} heads), ms per call:",
                "",
                "| path | ms (median) | IQR | ratio to fast |",
                "|---|---|---|---|",
            ]
            for name, s in layer["paths"].items():
                lines.append(f"| {name} | {s['median']:.1f} | {s['iqr']:.1f} | {s['ratio']:.2f}x |")
        for opt in micro["tar_options"]:
            lines += [
                "",
                f"TAR attention core only, {opt['rows']} rows x {opt['heads']} heads x {opt['frames']} frames, ms:",
                "",
                "| option | ms (median) | ratio to SDPA without TAR | vs whole-tensor TAR (before) |",
                "|---|---|---|---|",
            ]
            for name, s in opt["options"].items():
                exact = (
                    "-"
                    if "exact" not in s
                    else ("bit-identical" if s["exact"] else f"max diff {s['max_abs_diff']:.1e}")
                )
                lines.append(f"| {name} | {s['median']:.1f} | {s['ratio']:.2f}x | {exact} |")
            if opt["notes"]:
                lines.append(f"\nnotes: {opt['notes']}")
        if micro["scaling"]:
            names = list(micro["scaling"][0]["paths"])
            lines += ["", "Frame-count scaling, one level-0 layer, ratio to fast (ms of fast):", ""]
            lines += [
                "| frames | rows | " + " | ".join(names) + " |",
                "|---" * (len(names) + 2) + "|",
            ]
            for layer in micro["scaling"]:
                p = layer["paths"]
                cells = [f"{p[n]['ratio']:.2f}x" for n in names]
                cells[0] = f"{p[names[0]]['median']:.0f} ms"
                lines.append(f"| {layer['frames']} | {layer['rows']} | " + " | ".join(cells) + " |")
    if result.get("targets"):
        lines += ["", "Targets:", "", "| target | measured | met |", "|---|---|---|"]
        for key, c in result["targets"].items():
            meas = f"time {c['time_ratio']:.3f}x (target {c['time_target']:.2f}x)"
            met = c["time_met"]
            if "identical" in c:
                meas += ", output " + ("identical" if c["identical"] else "DIFFERS")
                met = met and c["identical"]
            if "peak_ratio" in c:
                meas += f", peak memory {c['peak_ratio']:.3f}x (target {c['memory_target']:.2f}x; working memory {c['delta_ratio']:.2f}x)"
                met = met and c["memory_met"]
            lines.append(f"| {key} | {meas} | {'yes' if met else 'NO'} |")
    lines.append(f"\n(wall time of the benchmark: {result.get('wall_s', 0):.0f} s)")
    return "\n".join(lines)

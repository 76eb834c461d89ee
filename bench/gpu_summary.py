"""The summary `bash bench/gpu_session.sh all` prints last: each step's status, the test
counts, the op benchmarks' target checks and headline rows, the host-cost ratios and the
recovery, RDED and student rows, and (where those steps ran) the decode rows and the ImageNet
rehearsal's steps, read from the logs and JSON the steps left in one directory.

    python bench/gpu_summary.py DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Dict, List

STEPS = ("build", "test", "ops", "overhead", "cifar100", "imagenet", "rded", "student", "decode", "rehearsal")
RDED_RESULTS = ("rded.json", "rded-bf16.json", "rded-bf16-channels-last.json")  # the rded step's runs (gpu_session.sh)
STUDENT_RESULTS = ("student.json", "student-bf16.json", "student-bf16-device.json")  # the student step's runs
RESULTS_OF_STEPS = {"rded": RDED_RESULTS, "student": STUDENT_RESULTS}  # the JSON each run of the step leaves
OPS_RESULTS = ("ops-bf16.json", "ops.json")  # the ops step's runs, in their order (gpu_session.sh)


def read_text(path: Path) -> str:
    """The file's text, stray bytes replaced (a crash's log must not stop the summary)."""
    return path.read_text(errors="replace")


def json_lines(directory: Path, name: str, render: Callable[[Dict], List[str]]) -> List[str]:
    """The lines ``render`` makes of the JSON file ``name`` (none where it is missing). A file
    it cannot read or render (a field missing or null that a row cut short or failed left)
    costs only its own lines, replaced by one that says why, never the rest of the summary."""
    path = directory / name
    if not path.exists():
        return []
    try:
        result = json.loads(read_text(path))
        return render(result) if result else []
    except Exception as exc:  # (any: a summary that stops here loses every later step's lines)
        why = (str(exc).splitlines() or [""])[0][:160]
        return [f"{name}: not summarized ({type(exc).__name__}: {why})"]


def step_status(directory: Path, step: str) -> str:
    """The step's outcome, and its wall time where `all` ran it (``<step>.seconds``)."""
    try:
        status = read_text(directory / f"{step}.status").strip()
    except OSError:
        return "not run"
    outcome = "ok" if status == "0" else f"failed ({status})" if status.isdigit() else status
    try:
        return f"{outcome} ({int(read_text(directory / f'{step}.seconds'))} s)"
    except (OSError, ValueError):
        return outcome


def read_lines(path: Path) -> List[str]:
    """The non-empty lines of a file, none when it is missing (a step's notes)."""
    try:
        return [line.strip() for line in read_text(path).splitlines() if line.strip()]
    except OSError:
        return []


def last_line(path: Path, containing: str) -> str:
    try:
        lines = [line for line in read_text(path).splitlines() if containing in line]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def target_lines(checks: List[Dict], not_measured: List[Dict] = ()) -> List[str]:
    """Per implementation: its targets met of those checked, each one missed, failed (a wrong
    result) or planned but not measured."""
    if not checks and not not_measured:
        return ["    (no target checks)"]
    lines = []
    for impl in sorted({c["impl"] for c in [*checks, *not_measured]}):
        mine = [c for c in checks if c["impl"] == impl]
        missed = [c for c in mine if not c["met"]]
        unmeasured = [t for t in not_measured if t["impl"] == impl]
        auto = " (auto)" if any(c.get("auto") for c in mine) else ""
        lines.append(f"    {impl}{auto}: {len(mine) - len(missed)}/{len(mine)} met"
                     + (f", {len(unmeasured)} not measured" if unmeasured else ""))
        for c in missed:
            outcome = "MISSED" if c.get("correct", True) else "FAILED (wrong result)"
            lines.append(f"      {outcome} {c['case']}: {c['what']} {c['value']:.2f} (target {c['target']})")
        for t in unmeasured:
            lines.append(f"      NOT MEASURED {t['case']}: {t['what']} (target {t['target']})")
    return lines


def ops_lines(result: Dict) -> List[str]:
    env = result["environment"]
    cut_short = " INCOMPLETE: it ended before its last row" if result.get("complete") is False else ""
    lines = [f"  {env['device']}, copy bandwidth {env.get('copy_bandwidth_GBps', float('nan')):.0f} GB/s{cut_short}"]
    bn = [r for r in result["results"] if r["op"] == "bn_stat_loss"]
    for case in dict.fromkeys((r["workload"], r["layout"], r["dtype"]) for r in bn):
        row = {r["impl"]: r for r in bn if (r["workload"], r["layout"], r["dtype"]) == case}
        cells = "  ".join(f"{impl} {r['fwd_bwd_ms']:.3f}{'' if r.get('correct', True) else ' WRONG'}"
                          for impl, r in row.items())
        lines.append(f"    {case[0]} {case[2]} {case[1]}: fwd+bwd ms  {cells}")
    wrong = [f"{r['op']} {r['impl']} ({r['workload']})" for r in result["results"] if r.get("correct") is False]
    if wrong:
        lines.append(f"    WRONG RESULT against the float64 reference: {'; '.join(wrong)}")
    return lines + target_lines(result.get("targets", []), result.get("targets_not_measured", []))


def missing_results(directory: Path) -> List[str]:
    """A line per step that ran (or was cut short) and left one of its runs' JSON missing."""
    out = []
    for step, names in RESULTS_OF_STEPS.items():
        if step_status(directory, step).split(" (")[0] in ("not run", "skipped"):
            continue
        missing = [name for name in names if not (directory / name).exists()]
        if missing:
            out.append(f"{step}: MISSING {', '.join(missing)} (a run failed, or did not run; see {step}.log)")
    return out


def summary(directory: Path) -> str:
    out = [f"GPU session summary ({directory})", ""]
    for step in STEPS:
        out.append(f"  {step:<9} {step_status(directory, step)}")
    out += missing_results(directory)
    out.append("")
    # (info's row "  CUDA kernels ...", not the check's line, which names the CUDA kernels too)
    out.append(f"build: {last_line(directory / 'build.log', '  CUDA kernels ') or 'no record'}")
    out.append(f"build check: {last_line(directory / 'build.log', 'info --check') or 'no record'}")
    out.append(f"tests: {last_line(directory / 'test.log', ' in ') or 'no record'}")
    out += [f"tests: note: {note}" for note in read_lines(directory / "test.notes")]
    for name in OPS_RESULTS:
        out += json_lines(directory, name, lambda result, name=name: [f"ops ({name}):", *ops_lines(result)])
    out += json_lines(directory, "ops-overhead.json", overhead_lines)
    for preset in ("cifar100", "imagenet"):
        out += json_lines(directory, f"recovery-{preset}.json",
                          lambda result, preset=preset: recovery_lines(preset, result))
    for name in RDED_RESULTS:
        out += json_lines(directory, name, rded_lines)
    for name in STUDENT_RESULTS:
        out += json_lines(directory, name, student_lines)
    out += json_lines(directory, "decode.json", decode_lines)
    out += json_lines(directory, "rehearsal.json", rehearsal_lines)
    return "\n".join(out)


def overhead_lines(result: Dict) -> List[str]:
    """The host cost per call of each op and implementation, and its targets (bench_ops.py --overhead)."""
    out = ["host cost per fwd+bwd call (tiny shapes):"]
    for r in result["results"]:
        out.append(f"    {r['op']:<14} {r['impl']:<18} {r['fwd_bwd_host_us']:8.1f} us  {r['ratio_to_baseline']:.2f}x"
                   f"{'' if r.get('correct', True) else '  WRONG RESULT'}")
    for c in result.get("targets", []):
        out.append(f"    target {c['op']}: {c['ratio']:.2f}x (<= {c['target_max_ratio']}x) "
                   f"{'met' if c['met'] else 'MISSED'}")
    return out


def recovery_lines(preset: str, result: Dict) -> List[str]:
    """Each teacher's rows and the projections (bench_recovery.py); a row without a time (out of
    memory, or a plan it does not apply to) shows its error, a speed-up without a reference time
    shows n/a (as bench_recovery.print_table)."""
    cut_short = " (INCOMPLETE: it ended before its last row)" if result.get("complete") is False else ""
    out = [f"recovery {preset}{' (REDUCED)' if result.get('reduced') else ''}{cut_short}:"]
    for r in result["rows"]:
        if "error" in r:
            out.append(f"    {r['teacher']:<20} {r['row']:<32} {r['error']}")
            continue
        graph = f"  graph: {', '.join(r['cuda_graph'])}" if r.get("cuda_graph") else ""
        speedup = r.get("speedup_vs_reference")
        speedup = "n/a" if speedup is None else f"{speedup:.2f}x"
        timing = f" ({r['per_iteration_timing'].split(':')[0]})" if r.get("per_iteration_timing") else ""
        out.append(f"    {r['teacher']:<20} {r['row']:<32} {r['ms_per_ufc_iteration']:9.2f} ms/UFC-it{timing}  "
                   f"{speedup} ref  peak {r['peak_memory_mib']:.0f} MiB{graph}")
        for op in (r.get("profile") or {}).get("top", [])[:5]:
            out.append(f"        {op['share']:6.1%} {op['ms']:9.2f} ms  {op['name'][:60]}")
    for p in result.get("projections", []):
        out.append(f"    projection {p['run']}: {p['row']} {p['hours']:.3f} {p['unit']} "
                   f"(teachers measured: {', '.join(p['teachers_measured'])})")
    return out


def rded_lines(result: Dict) -> List[str]:
    """RDED's rows and its projection to the whole split (bench_rded.py)."""
    s, rows = result["settings"], {r["section"]: r for r in result["results"]}
    p = result["projection"]
    decodes = ", ".join(f"{r['images_per_s']:.0f} images/s with {r['workers']} workers"
                        for r in result["results"] if r["section"] == "decode")
    if p.get("decode_from"):  # (a run that took an earlier run's decode rate)
        decodes = f"{p['decode_images_per_s']:.0f} images/s with {p['decode_workers']} workers, from " \
                  f"{Path(p['decode_from']).name}"
    return [
        f"rded ({s['family']} recipe, {s['candidates']} candidates x {s['crops']} crops, {s['size']} px, "
        f"{s['teachers']}, {s.get('precision', 'fp32')}{' channels_last' if s.get('channels_last') else ''}):",
        f"    scoring {rows['scoring']['s_per_class']:.3f} s/class ({rows['scoring']['crops_per_s']:.0f} crops/s), "
        f"forward alone {rows['forward only']['s_per_class']:.3f}; decode {decodes}",
        f"    projected {p['classes']} classes (decoding with the first): {p['overlapped_s'] / 60:.1f} min "
        f"overlapped, {p['serial_s'] / 60:.1f} min serial",
    ]


def student_lines(result: Dict) -> List[str]:
    """The student step's parts and the projected run (bench_student.py)."""
    s, c, p = result["settings"], result["config"], result["projection"]
    parts = ", ".join(f"{r['section']} {r['ms_per_step']:.1f}" for r in result["results"])
    out = [
        f"student ({c['model']}, {s['recipe']} recipe, batch {c['batch_size']}, {s['size']} px, "
        f"{c.get('precision', 'fp32')}{' channels_last' if c.get('channels_last') else ''}"
        f"{', augmented on the device' if c.get('augment_on') == 'device' else ''}"
        f"{', labelled by ' + s['dynamic'] + ' on every batch' if s.get('dynamic') else ''}): {parts} ms/step",
        f"    the loop takes {p['loop_of_serial']:.0%} of the parts' sum (all overlapped: {p['overlapped_of_serial']:.0%}); "
        f"projected {p['images']} images x {p['epochs']} epochs: {p['loop_h']:.2f} h",
    ]
    for r in result["results"]:
        if "profile" in r:
            top = ", ".join(f"{op['name']} {op['share']:.0%}" for op in r["profile"]["top"][:3])
            out.append(f"    {r['section']} ({r['profile']['by']}): {top}")
    return out


def decode_lines(result: Dict) -> List[str]:
    """images/s of each decoder per DataLoader worker count, alone and with the model's forward,
    beside the reference decoder (bench_decode.py)."""
    s, rows = result["settings"], result["results"]
    forward = f", {s['model']} forward" if any(r["section"] == "forward" for r in rows) else ""
    out = [f"decode ({result['environment']['device']}, {result['image_set']['n']} {result['image_set']['source']} "
           f"images to {s['size']} px{forward}), images/s by DataLoader workers w:"]
    for r in rows:
        if r["section"] == "forward":
            out.append(f"    forward only, batch {r['batch']}: {r['images_per_s']:.0f}")
    speeds = [r for r in rows if r["section"] in ("decode", "decode+forward")]
    for section, batch, decoder in dict.fromkeys((r["section"], r["batch"], r["decoder"]) for r in speeds):
        cells = ", ".join(f"w={r['workers']} {r['images_per_s']:.0f}"
                          + (f" ({r['ratio_to_pillow']:.2f}x)" if r.get("ratio_to_pillow") else "")
                          for r in speeds if (r["section"], r["batch"], r["decoder"]) == (section, batch, decoder))
        out.append(f"    {section}, batch {batch}, {decoder}: {cells}")
    for r in rows:
        if r["section"] == "pixels":
            fallbacks = f", {r['pillow_fallbacks']} by Pillow" if r["pillow_fallbacks"] else ""
            out.append(f"    pixels of {r['decoder']} vs {r['against']}: mean |diff| {r['mean_abs_diff']:.3f}, "
                       f"max {r['max_abs_diff']}{fallbacks}")
    out += [f"    skipped {s['decoder']}: {s['reason']}" for s in result.get("skipped", [])]
    return out


def rehearsal_lines(result: Dict) -> List[str]:
    """The ImageNet rehearsal: the run's wall time and peak, each step's seconds and peak
    resident memory (rehearse_imagenet.py)."""
    tree, run = result["tree"], result["run"]
    out = [f"rehearsal on {result.get('device', 'cpu')} ({result['environment']['device']}), {tree['classes']} classes x "
           f"{tree['train_per_class']} train + {tree['val_per_class']} val images: {run['wall_s']:.0f} s wall, peak "
           f"{run['process_tree_peak_rss_gib']:.2f} GiB resident (process tree; the steps': main process); "
           f"decoded {result['decoded_files']}"]
    for name, step in result["steps"].items():
        peak = "unknown" if step["peak_rss_gib"] is None else f"{step['peak_rss_gib']:.2f} GiB"
        out.append(f"    {name:<36} {step['seconds']:8.1f} s  peak {peak}")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/gpu_summary.py DIR")
    print(summary(Path(sys.argv[1])))

"""The results of an `infer-fast run`: the results file (resumed only with the settings that
made it), the tables (accuracy per method and ipc, DD-Ranking scores) and results.md."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from ._io import TOO_DEEP, parse_failure
from .config import home_expanded
from .data.registry import dataset_label
from .run_identity import another_run_message, differing, dotted
from .set_keys import RunKey, SetKey, external_method


def set_entries(cfg: Dict[str, Any], sets: Dict[str, Any]) -> List[SetKey]:
    """Every set of a run, in table order: ours for each ipc, then the sets given to the run
    (``external``), at their own ipc once measured."""
    entries = [SetKey(method, ipc) for ipc in cfg["ipc"] for method in cfg["methods"]]
    measured = [SetKey.parse(key) for key in sets]
    for label in cfg.get("external") or {}:
        found = [key for key in measured if key.method == external_method(label)]
        if found:
            entries.append(found[0])
    return entries


def runs_of(runs: Dict[str, Any], key: SetKey, seeds: Optional[int] = None) -> List[Dict[str, Any]]:
    """The student runs of the set ``key``, in seed order: those of seeds 0..``seeds``-1 (the
    run's: an earlier session of more seeds left the others in the file), every seed recorded
    where ``seeds`` is None."""
    keys = sorted((RunKey.parse(k) for k in runs), key=lambda k: k.seed)  # (by number: seed2 before seed10)
    return [runs[str(k)] for k in keys if k.set_key == key and (seeds is None or k.seed < seeds)]


def table_rows(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The rows of the results table: ``results["table"]`` as the run wrote it, else summarized."""
    return results["table"] if "table" in results else summarize(results)


def table_runs(results: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """{run key: record} of the student runs the table shows: those of its rows' sets (the run
    config's methods and ipc, the sets given to it: :func:`table_rows`) and of the config's
    seeds. The file may hold more, of an earlier session's wider config, kept for a later one."""
    shown = {SetKey(row["method"], row["ipc"]) for row in table_rows(results)}
    seeds = results.get("config", {}).get("seeds")
    return {k: run for k, run in results.get("runs", {}).items()
            if RunKey.parse(k).set_key in shown and (seeds is None or RunKey.parse(k).seed < seeds)}


RESULTS_FILE = "results.json"  # in the run directory
RUN_REPORT = "results.md"  # beside it: the tables (markdown_report)
RESULTS_FORMAT = "infer-fast-results"
# the settings that determine a run's sets and students, with the run-level options the methods
# declare after method_options (INFER's accounting and selection: registry.run_level_options)
# and the methods' own sections (Method.config_section: INFER's recovery, SRe2L's sre2l): a
# results file made under others is not continued (its sets and runs would stand beside new ones
# as if alike); a setting the file predates counts as its default; the data root is compared as
# the folder, then as the data it holds (_check_same_settings)
RUN_SETTINGS = ("dataset", "teachers", "method_options", "student", "dynamic_epochs", "data_root")


def run_settings(config: Dict[str, Any]) -> Dict[str, Any]:
    """The RUN_SETTINGS, run-level options and method sections of a run config dict (those it
    has), without the settings that do not change a result (a method's ``result_neutral``:
    batching, checkpoint cadence; a student's and each trained teacher's: their device,
    evaluation batches): a run continues under other values of them."""
    from .methods import all_methods
    from .methods.registry import run_level_options
    from .student import STUDENT_RESULT_NEUTRAL
    from .teacher import TEACHER_RESULT_NEUTRAL

    def without(options: Any, neutral) -> Any:
        return {k: v for k, v in options.items() if k not in neutral} if isinstance(options, dict) else options

    methods = {m.name: m for m in all_methods()}
    sections = {m.config_section: m for m in methods.values() if m.config_section}
    after = RUN_SETTINGS.index(METHOD_OPTIONS) + 1  # (the order a message names differing settings in)
    names = (*RUN_SETTINGS[:after], *run_level_options(), *RUN_SETTINGS[after:], *sections)
    settings = {k: config[k] for k in names if k in config}
    for section, method in sections.items():
        if section in settings:
            settings[section] = without(settings[section], method.result_neutral)
    if isinstance(settings.get("method_options"), dict):
        kept = {name: without(options, methods[name].result_neutral if name in methods else ())
                for name, options in settings["method_options"].items()}
        settings["method_options"] = {name: options for name, options in kept.items() if options != {}}  # ({}: none)
    if "student" in settings:
        settings["student"] = without(settings["student"], STUDENT_RESULT_NEUTRAL)
    if isinstance(settings.get(TEACHERS), list):  # (TeacherConfig fields, or {path} or {model, pretrained})
        settings[TEACHERS] = [without(entry, TEACHER_RESULT_NEUTRAL) for entry in settings[TEACHERS]]
    return settings


# the sections compared field by field, as the settings they take effect as (:func:`effective_settings`)
STUDENT_SECTION = "student"
METHOD_OPTIONS = "method_options"
TEACHERS = "teachers"  # (compared entry by entry, field by field: _spread_teachers)


# what a results file records of a teachers entry {path: FILE} beside its path: the file's
# SHA-256 (the same weights under another path, or by a relative path from elsewhere, are the
# same teacher; a file retrained in place is not)
TEACHER_FILE_SHA256 = "sha256"


def _recorded_teacher(entry: Any) -> Any:
    """A run config's ``teachers`` entry as its results file records it: a checkpoint's with its
    file's SHA-256 (:data:`TEACHER_FILE_SHA256`; none where it cannot be read yet)."""
    from ._io import file_sha256

    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        return entry
    try:
        return {**entry, TEACHER_FILE_SHA256: file_sha256(entry["path"])}
    except OSError:  # (refused later, naming the file)
        return entry


def _teacher_as_taken(entry: Dict[str, Any], other: Dict[str, Any]) -> Dict[str, Any]:
    """A run config's ``teachers`` entry as it takes effect, beside the other side's ``other``: a
    trained one with TeacherConfig's defaults filled in (``lr: 0.1`` spelled out is the teacher
    of none); a checkpoint by its file's SHA-256 where both sides record one, else by its path as
    written (a results file of before)."""
    from .options import options_of
    from .teacher import TEACHER_RESULT_NEUTRAL, TeacherConfig

    if "path" in entry:
        if TEACHER_FILE_SHA256 in entry and TEACHER_FILE_SHA256 in other:
            return {k: v for k, v in entry.items() if k != "path"}
        return {k: v for k, v in entry.items() if k != TEACHER_FILE_SHA256}
    if "pretrained" in entry:
        return entry
    defaults = {name: opt.default for name, opt in options_of(TeacherConfig).items()
                if name != "dataset" and name not in TEACHER_RESULT_NEUTRAL}
    return {**defaults, **entry}


def _spread_teachers(sides: Tuple[Dict[str, Any], Dict[str, Any]]) -> None:
    """Each side's ``teachers`` entries as they take effect (:func:`_teacher_as_taken`) and as
    "teachers[i].field", compared and named field by field ("teachers[0].epochs differs"), where
    both sides list as many entries, each a mapping; else the lists stay whole (another number
    of teachers)."""
    lists = [side.get(TEACHERS) for side in sides]
    if not all(isinstance(entries, list) and all(isinstance(e, dict) for e in entries) for entries in lists) \
            or len(lists[0]) != len(lists[1]):
        return
    for side, others in zip(sides, reversed(lists)):
        entries = [_teacher_as_taken(entry, other) for entry, other in zip(side.pop(TEACHERS), others)]
        side.update({f"{TEACHERS}[{i}].{name}": value for i, entry in enumerate(entries)
                     for name, value in entry.items()})


def _dataset_as_taken(dataset: Any) -> Any:
    """The run's ``dataset`` by its canonical name (``FASHION_MNIST_MINI``, ``{name: ...}`` alone:
    the same dataset), with the options it has that are not the dataset's own values
    (``num_classes: 10`` of Fashion-MNIST spelled out is the same dataset)."""
    from .data.registry import dataset_options, get_dataset

    try:
        name, options = dataset_options(dataset)
    except (ValueError, TypeError, KeyError):  # (not a dataset any more: compared as written)
        return dataset
    spec = get_dataset(name).spec  # (None: a folder dataset's classes come from its files)
    own = {} if spec is None else {"num_classes": spec.num_classes, "image_size": spec.image_size}
    options = {k: v for k, v in options.items() if own.get(k, object()) != v}
    return {"name": name, **options} if options else name


def _method_effective(method, config: Dict[str, Any], own: Any) -> Dict[str, Any]:
    """The options ``own`` (a method's section or ``method_options`` entry of the run config
    dict ``config``) as the method takes them: with the ``recovery`` settings it shares under
    them and its recipe for the run's dataset, checked and parsed by the method (a recovery's:
    the one builder, distill.config.recovery_config, with the method's recipes); a parsed
    config (RecoveryConfig) as its fields; without its result-neutral options and the
    run-level settings it is given (compared on their own)."""
    from .methods.registry import parsed_option_values
    from .run_config import distillation_seed, shared_recovery_settings

    recovery = config.get("recovery") or {}
    shared = shared_recovery_settings(method, recovery)
    options = {k: v for k, v in {**shared, **own}.items() if k not in method.result_neutral}
    parsed = method.options_for_dataset(options, config.get("dataset"), distillation_seed(recovery))
    fields = {name: value for name, value in parsed_option_values(parsed).items()
              if name not in method.run_options and name not in method.result_neutral}
    return json.loads(json.dumps(fields))  # (as a results file holds them: lists, not tuples)


def _student_effective(config: Dict[str, Any], student: Any) -> Dict[str, Any]:
    """The ``student`` section as the StudentConfig fields it takes effect as (the dataset's
    student recipe under it), without the result-neutral ones and the seed (each run's own)."""
    from .run_config import build_config
    from .student import RECIPES, STUDENT_RESULT_NEUTRAL, StudentConfig, recipe_of

    values = {**RECIPES[recipe_of(config.get("dataset"))],
              **{k: v for k, v in student.items() if k not in STUDENT_RESULT_NEUTRAL}}
    fields = dataclasses.asdict(build_config(StudentConfig, values, STUDENT_SECTION))
    return json.loads(json.dumps({k: v for k, v in fields.items() if k not in STUDENT_RESULT_NEUTRAL + ("seed",)}))


def effective_settings(recorded: Dict[str, Any], current: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """:func:`run_settings` of the run config dicts ``recorded`` (a results file's) and
    ``current``, with each method's section (INFER's ``recovery``, SRe2L's ``sre2l``), each
    ``method_options`` entry and the ``student`` section as the settings they take effect as,
    field by field (their defaults and recipes applied: ``r_bn: 1.0`` spelled out in
    ``recovery`` is the run of none), flattened as "recovery.r_bn", "method_options.cda.r_bn",
    "student.temperature" (run_identity.dotted), each ``teachers`` entry's fields as they take
    effect, as "teachers[0].epochs" (:func:`_spread_teachers`), and the dataset by its name. A section either side cannot
    build that way (a file of an older version, a method no longer registered) is compared as
    written on both sides, without its result-neutral options."""
    from .methods import all_methods
    from .methods.registry import find_method

    sides = (run_settings(recorded), run_settings(current))
    configs = (recorded, current)
    sections = {m.config_section: m for m in all_methods() if m.config_section}

    def build(key, make, raw):
        try:
            values = [make(config) for config in configs]
        except (ValueError, TypeError, KeyError, AttributeError):
            values = [side.get(key, {}) if raw is None else raw(side) for side in sides]
        for side, value in zip(sides, values):
            side[key] = value

    for section, method in sections.items():
        build(section, lambda config, m=method, s=section: _method_effective(m, config, config.get(s) or {}), None)
    build(STUDENT_SECTION, lambda config: _student_effective(config, config.get(STUDENT_SECTION) or {}), None)
    named = [sorted(((config.get(METHOD_OPTIONS) or {}) if isinstance(config.get(METHOD_OPTIONS), dict) else {}))
             for config in configs]
    for name in dict.fromkeys(named[0] + named[1]):  # (a method not registered: compared as written)
        def own(config: Dict[str, Any], name: str = name) -> Dict[str, Any]:
            return (config.get(METHOD_OPTIONS) or {}).get(name) or {}

        build(f"{METHOD_OPTIONS}.{name}", lambda config, m=find_method(name), own=own: _method_effective(
            m, config, own(config)), lambda side, own=own: own(side))
    for side in sides:
        side.pop(METHOD_OPTIONS, None)
        if "dataset" in side:
            side["dataset"] = _dataset_as_taken(side["dataset"])
    _spread_teachers(sides)
    return tuple(dotted(side, (*sections, STUDENT_SECTION, *(k for k in side if k.startswith(f"{METHOD_OPTIONS}."))))
                 for side in sides)


def _defaults(cfg) -> Dict[str, Any]:
    """The run config's field defaults: what a setting a results file predates counts as."""
    return {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cfg)}


def data_place(data_root: Optional[str]) -> Optional[str]:
    """The folder a data root names, however spelled (relative, "~", a trailing "/", a link):
    its absolute real path; None (the dataset's default places) stays None."""
    return None if data_root is None else os.path.realpath(home_expanded(data_root))


def recorded_config(cfg) -> Dict[str, Any]:
    """The run config as its results file records it, the data root as :func:`data_place`
    (a relative path means another folder from elsewhere), each teacher file with its SHA-256."""
    recorded = dataclasses.asdict(cfg)
    return {**recorded, "data_root": data_place(cfg.data_root),
            "teachers": [_recorded_teacher(entry) for entry in recorded["teachers"]]}


def _train_digest(dataset, data_root: Optional[str]) -> Optional[str]:
    """The identity of the training split found at ``data_root`` (what a teacher checkpoint
    ties its resume to: the files' listing, or the arrays' content); None where none is."""
    from .data import load_dataset

    try:
        return load_dataset(dataset, "train", data_root=data_root, download=False, in_memory=False).digest()
    except (OSError, ValueError):
        return None


def _recorded_set_keys(old: Dict[str, Any]) -> List[SetKey]:
    """The sets the results ``old`` hold anything of: a set record, a score, a student run."""
    keys = [SetKey.parse(k) for part in ("sets", "scores") for k in old.get(part) or {}]
    return keys + [RunKey.parse(k).set_key for k in old.get("runs") or {}]


def _started(out: Path, method: str, old: Dict[str, Any]) -> bool:
    """Whether the run directory ``out`` holds anything of ``method``'s sets: recorded
    (:func:`_recorded_set_keys`), on disk or begun (a recovery checkpoint beside one)."""
    from .pipeline import SETS_DIR  # (here: pipeline builds on this module)

    return (any(key.made_as.method == method for key in _recorded_set_keys(old))
            or any((out / SETS_DIR).glob(SetKey.directory_pattern(method))))


def _changed_unmade(names: List[str], old: Dict[str, Any], cfg, out: Path) -> List[str]:
    """Of the differing settings ``names``, those that may change as nothing they determine was
    made yet: ``method_options`` where each changed method has no set begun, the student's
    settings before any student run. (An option found wrong after the others' sets is then fixed
    in the same run directory.)"""
    from .pipeline import STUDENTS_DIR  # (here: pipeline builds on this module)

    free = []
    if "method_options" in names:
        before, now = old["config"].get("method_options") or {}, cfg.method_options
        changed = [m for m in set(before) | set(now) if before.get(m) != now.get(m)]
        if not any(_started(out, m, old) for m in changed):
            free.append("method_options")
    if not old.get("runs") and not any((out / STUDENTS_DIR).glob("*.pt")):
        free += ["student", "dynamic_epochs"]
    return [name for name in names if name in free]


def _check_same_settings(path: Path, old: Dict[str, Any], cfg, config: Dict[str, Any]) -> None:
    """ValueError (another_run_message) unless the results file ``path`` (read: ``old``) was made
    under ``cfg``'s settings (``config``: recorded_config(cfg)), but for those nothing was made
    of yet (:func:`_changed_unmade`); the data by where it lies, and where that moved, by the
    training split's identity."""
    recorded, current = effective_settings(old["config"], config)
    if "data_root" in recorded:  # (a file of before recorded it as spelled: read from here)
        recorded["data_root"] = data_place(recorded["data_root"])
    names = differing(recorded, current, defaults=_defaults(cfg))
    free = _changed_unmade(list(dict.fromkeys(name.split(".")[0] for name in names)), old, cfg, path.parent)
    names = [name for name in names if name.split(".")[0] not in free]
    if names == ["data_root"]:  # another folder, or the default places: the same data?
        digest = _train_digest(cfg.dataset, recorded.get("data_root"))
        if digest is not None and digest == _train_digest(cfg.dataset, cfg.data_root):
            names = []
    if names:
        # (the whole directory: its sets, teachers, tables and plots are that run's too)
        raise ValueError(another_run_message("results file", path, names,
                                             f"choose another out directory or delete {path.parent.resolve()}",
                                             recorded))


def external_identity(directory, distilled) -> Dict[str, str]:
    """What a label of ``external`` names for the life of a run directory: the set's folder
    (:func:`data_place`) and its content (every tensor's digest: a relabelled set differs)."""
    from .student import set_digest

    return {"directory": data_place(directory), "set_sha256": set_digest(distilled)}


def _check_external_sets(path: Path, old: Dict[str, Any], identities: Dict[str, Dict[str, str]]) -> None:
    """ValueError unless each label of ``external`` names the set the results ``old`` recorded
    under it (its folder and content), but for a label nothing was made of yet: a changed
    set's row would stand in the table as the old one's (or beside it, at another ipc)."""
    recorded = old.get("external_sets") or {}
    for label, now in identities.items():
        before = recorded.get(label)
        if before is None or before == now or not any(key.method == external_method(label)
                                                      for key in _recorded_set_keys(old)):
            continue
        changed = (f"{label} names {now['directory']}, {path} records {label} as {before['directory']}"
                   if before["directory"] != now["directory"] else
                   f"{label}: the images or labels of {now['directory']} changed since {path} recorded them "
                   "(relabelled or replaced)")
        raise ValueError(f"external: {changed}; a label names one set for the life of a run directory: give "
                         "the set a new label, or choose another out directory")


# a results file's parts: (the type each holds, whether every results file has it); a part
# that not every file has may be null (none)
RESULTS_PARTS = {"config": (dict, True), "teachers": (list, True), "sets": (dict, True), "runs": (dict, True),
                 "scores": (dict, False), "external_sets": (dict, False), "timing": (dict, False)}
_TYPE_NAMES = {dict: "an object", list: "a list"}
# the numbers of a set's record that the table shows, and those of a student run's it sums up
SET_RECORD_NUMBERS = ("compression_ratio_percent", "feature_duplication", "training_images", "stored_images")
RUN_RECORD_NUMBERS = {"final_accuracy": (0.0, 1.0), "elapsed_s": (0.0, math.inf)}


def _check_results_file(path: Path, old: Any) -> None:
    """Before anything reads it: ``old`` (the results file ``path``) holds what a run writes,
    else a ValueError naming the file and the part: its parts (RESULTS_PARTS), its set and run
    keys (SetKey, RunKey), a dict per record, and the numbers the table shows. An optional part
    that is null is dropped (none)."""
    def refuse(what: str) -> None:
        raise ValueError(f"{path} is not a valid results file ({what}); delete it to start the table over")

    def shown(value: Any) -> str:
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + "..."

    def check_number(where: str, value: Any, low: float = -math.inf, high: float = math.inf) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            bounds = f" from {low:g} to {high:g}" if (low, high) != (-math.inf, math.inf) else ""
            refuse(f"{where} must be a number{bounds}, got {shown(value)}")

    if not isinstance(old, dict) or old.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{path} is not an infer-fast results file")
    for part, (kind, required) in RESULTS_PARTS.items():
        if not required and old.get(part, {}) is None:
            del old[part]
        elif required and part not in old:
            refuse(f"no {part!r}")
        elif part in old and not isinstance(old[part], kind):
            refuse(f"{part!r} must be {_TYPE_NAMES[kind]}, got {shown(old[part])}")
    for part, parse in (("sets", SetKey.parse), ("scores", SetKey.parse), ("runs", RunKey.parse)):
        for key, record in old.get(part, {}).items():
            try:
                parse(key)
            except ValueError as exc:
                refuse(f"{part}: {exc}")
            if not isinstance(record, dict):
                refuse(f"{part}[{key!r}] must be an object, got {shown(record)}")
    for key, report in old.get("scores", {}).items():
        if not isinstance(report.get("protocol"), dict):  # (what its table is chosen by: _protocol_name)
            refuse(f"scores[{key!r}].protocol must be an object, got {shown(report.get('protocol'))}")
    for key, record in old["sets"].items():
        for name in SET_RECORD_NUMBERS:
            if record.get(name) is not None:
                check_number(f"sets[{key!r}].{name}", record[name])
    for key, record in old["runs"].items():
        for name, (low, high) in RUN_RECORD_NUMBERS.items():
            check_number(f"runs[{key!r}].{name}", record.get(name), low, high)
    for i, teacher in enumerate(old["teachers"]):
        if not isinstance(teacher, dict):
            refuse(f"teachers[{i}] must be an object, got {shown(teacher)}")


def load_results(path: Path, cfg, external: Optional[Dict[str, Dict[str, str]]] = None) -> Dict[str, Any]:
    """The results file at ``path`` to continue under ``cfg`` (a fresh one where there is none),
    refused (ValueError) when made under other settings or other external sets. ``external``:
    {label: :func:`external_identity`} of cfg's external sets (read from them when None)."""
    if external is None:
        from .storage import load_distilled

        external = {label: external_identity(d, load_distilled(d)) for label, d in cfg.external.items()}
    config = recorded_config(cfg)  # (once: it reads every teacher file's SHA-256)
    fresh = {"format": RESULTS_FORMAT, "config": config, "teachers": [], "sets": {}, "runs": {},
             "external_sets": external}
    if not path.exists():
        return fresh
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError, TOO_DEEP) as exc:  # (ValueError: not JSON, or not UTF-8 text)
        raise ValueError(f"{path} cannot be read ({parse_failure(exc)}); delete it to start the table over") from None
    _check_results_file(path, old)
    # runs are kept only if what determines them is unchanged
    _check_same_settings(path, old, cfg, config)
    _check_external_sets(path, old, external)
    old["config"] = config
    old["external_sets"] = {**(old.get("external_sets") or {}), **external}  # (a label left out stays taken)
    return old


def summarize(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One row per (method, ipc) with the accuracy over the finished seeds."""
    cfg = results["config"]
    rows = []
    for key in set_entries(cfg, results["sets"]):
        runs = runs_of(results["runs"], key, cfg.get("seeds"))
        accs = [run["final_accuracy"] for run in runs]
        info = results["sets"].get(str(key), {})
        t = torch.tensor(accs, dtype=torch.float64)
        rows.append({
            "method": key.method, "label": key.label, "ipc": key.ipc, "seeds": len(accs),
            "accuracy_mean": float(t.mean()) if accs else None,
            "accuracy_std": float(t.std(unbiased=False)) if accs else None,
            "per_seed": accs,
            "compression_ratio_percent": info.get("compression_ratio_percent"),
            "feature_duplication": info.get("feature_duplication"),
            "training_images": info.get("training_images"),
            "stored_images": info.get("stored_images"),
            "student_seconds": sum(run["elapsed_s"] for run in runs),
        })
    return rows


# what a set's compression ratio counts (its record's note), by what its students learn from
# (pipeline._student_labels): a soft label no student reads is not counted
CR_NOTES = {
    "static": "images + static soft labels + indices",
    "hard": "images + indices; no soft labels counted: the students train on hard labels",
    "per-batch": "images + indices; no soft labels stored (the teachers label every batch while training)",
}
# the table's mark on the CR of a set labelled per batch (INFER+Dyn, RDED: no labels counted, but
# the teachers needed while training), and its footnote below the table
PER_BATCH_CR_MARK = "†"
PER_BATCH_CR_NOTE = (f"{PER_BATCH_CR_MARK} labels from the teachers per batch: CR of images + indices, + the teachers at "
                     "training time: not comparable with the rows of static labels")


def format_table(results: Dict[str, Any]) -> str:
    """The results as a Markdown table; the CR of a set labelled per batch marked, the mark
    explained below the table (PER_BATCH_CR_NOTE)."""
    rows = summarize(results)
    lines = [
        "| method | ipc | top-1 % (final epoch, mean ± std) | seeds | CR % | feature dup. | train images | stored images |",
        "|---|---|---|---|---|---|---|---|",
    ]
    marked = False
    for r in rows:
        acc = "–" if r["accuracy_mean"] is None else f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}"
        cr = "–" if r["compression_ratio_percent"] is None else f"{r['compression_ratio_percent']:.3f}"
        if r["compression_ratio_percent"] is not None and SetKey(r["method"], r["ipc"]).labelled_per_batch:
            cr, marked = f"{cr} {PER_BATCH_CR_MARK}", True
        dup = "–" if r["feature_duplication"] is None else f"{r['feature_duplication']:.3f}"
        lines.append(f"| {r['label']} | {r['ipc']} | {acc} | {r['seeds']} | {cr} | {dup} | {r['training_images'] or '–'} | {r['stored_images'] or '–'} |")
    if marked:  # (a blank line first: a line right below a Markdown table is read as its row)
        lines += ["", PER_BATCH_CR_NOTE]
    return "\n".join(lines)


# what a score report's soft-label students learned (its protocol's soft_labels; a report that
# predates the option: the set's stored labels)
SOFT_LABEL_SOURCES = {"static": "the sets' stored soft labels", "per-batch": "teacher labels per batch"}
PER_BATCH_MARK = " (labels per batch)"  # a row scored per batch beside rows of stored labels


def shown_scores(results: Dict[str, Any]) -> List[Tuple[SetKey, Dict[str, Any]]]:
    """(set, score report) of the table's sets that have one, in the table's order (the file
    may hold others, of an earlier wider config); none where the config turns the scores off
    (the reports stay in the file for a later session, but this one's students and seeds did
    not make them); every report, in the file's order, where ``results`` records no config."""
    scores = results.get("scores") or {}
    if "config" not in results:
        return [(SetKey.parse(text), report) for text, report in scores.items()]
    if not results["config"].get("scores", True):  # (a config of before the option: as recorded)
        return []
    return [(key, scores[str(key)]) for key in set_entries(results["config"], results.get("sets") or {})
            if str(key) in scores]


def _protocol_name(report: Dict[str, Any]) -> str:
    from .evaluate import PROTOCOL_NAME

    return report["protocol"].get("name", PROTOCOL_NAME)  # (a report of before protocols were named is infer-fast's)


def score_tables(results: Dict[str, Any]) -> List[List[Tuple[SetKey, Dict[str, Any]]]]:
    """The :func:`shown_scores` by protocol, in the order of their first rows: one table each
    (a table's columns are its protocol's runs)."""
    tables: Dict[str, List[Tuple[SetKey, Dict[str, Any]]]] = {}
    for key, report in shown_scores(results):
        tables.setdefault(_protocol_name(report), []).append((key, report))
    return list(tables.values())


def _soft_label_mode(report: Dict[str, Any]) -> str:
    return report["protocol"].get("soft_labels", "static")


def _mixed_label_modes(shown: List[Tuple[SetKey, Dict[str, Any]]]) -> bool:
    """Whether some rows were scored with teacher labels per batch beside rows of stored labels
    (the sets of methods whose students are labelled per batch, under ``soft_labels: static``)."""
    return len({_soft_label_mode(report) for _, report in shown}) > 1


def format_scores(results: Dict[str, Any]) -> str:
    """The DD-Ranking scores of a run as Markdown tables, one per protocol (empty when none
    are shown: :func:`shown_scores`), each in the results table's order."""
    return "\n\n".join(format_score_table(shown) for shown in score_tables(results))


def format_score_table(shown: List[Tuple[SetKey, Dict[str, Any]]]) -> str:
    """The score reports ``shown`` (one protocol's: :func:`score_tables`) as a Markdown table;
    a row scored per batch beside rows of stored labels says so."""
    from .dd_ranking import PROTOCOL_NAME as DD_RANKING, format_printed

    mixed = _mixed_label_modes(shown)

    def pct(summary):
        return f"{100 * summary['mean']:.2f} ± {100 * summary['std']:.2f}"

    def label(key, report):
        return key.label + (PER_BATCH_MARK if mixed and _soft_label_mode(report) == "per-batch" else "")

    if _protocol_name(shown[0][1]) == DD_RANKING:  # its runs, and the scores on both scales
        lines = ["| method | ipc | hard | soft | random soft | soft, no mix | random soft, no mix | HLR | IOR | LRS ×100 "
                 "| ARS ×100 | LRS printed | ARS printed |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for key, report in shown:
            acc, sc, printed = report["accuracy"], report["scores"], report["scores_printed"]
            lines.append(f"| {label(key, report)} | {key.ipc} | {pct(acc['set_hard'])} | {pct(acc['set_soft'])} | "
                         f"{pct(acc['random_soft'])} | {pct(acc['set_plain'])} | {pct(acc['random_plain'])} | "
                         f"{pct(sc['hlr'])} | {pct(sc['ior'])} | {pct(sc['lrs'])} | {pct(sc['ars'])} | "
                         f"{format_printed(printed['lrs']['mean'])} | {format_printed(printed['ars']['mean'])} |")
        return "\n".join(lines)
    lines = ["| method | ipc | soft | soft, no aug. | hard, no aug. | random soft | random soft, no aug. | HLR | IOR "
             "| LRS ×100 | ARS ×100 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, report in shown:
        acc, sc = report["accuracy"], report["scores"]
        # the accuracies the scores are made of (the augmented hard-label run is in the report)
        lines.append(f"| {label(key, report)} | {key.ipc} | {pct(acc['set']['soft'])} | {pct(acc['set']['soft_plain'])} | "
                     f"{pct(acc['set']['hard_plain'])} | {pct(acc['random']['soft'])} | "
                     f"{pct(acc['random']['soft_plain'])} | {pct(sc['hlr'])} | {pct(sc['ior'])} | {pct(sc['lrs'])} | "
                     f"{pct(sc['ars'])} |")
    return "\n".join(lines)


def scores_note(shown: List[Tuple[SetKey, Dict[str, Any]]]) -> str:
    """What a scores table of results.md shows, from its reports ``shown`` (one protocol's:
    :func:`score_tables`): the protocol, the students' soft labels, the epochs of a method
    whose table students train fewer, the units."""
    from .dd_ranking import PROTOCOL_NAME as DD_RANKING

    dd_ranking = _protocol_name(shown[0][1]) == DD_RANKING
    if dd_ranking:
        about = "DD-Ranking's protocol (best of periodic tests over a rate grid), the run's seeds as rounds"
    else:
        about = "`infer-fast evaluate`'s protocol, the run's student and seeds"
    if _mixed_label_modes(shown):
        about += (f"; soft labels: {SOFT_LABEL_SOURCES['static']}, but {SOFT_LABEL_SOURCES['per-batch']} in the rows "
                  f"marked \"{PER_BATCH_MARK.strip()}\", as their methods' students take them")
    else:
        about += f"; soft labels: {SOFT_LABEL_SOURCES[_soft_label_mode(shown[0][1])]}"
    # (the protocol's epochs are every row's: DD-Ranking's protocol does not shorten a method's students)
    for key, report in shown:
        if key.own is not None and key.own.reduced_student_epochs:
            epochs = report["protocol"].get("student_config", {}).get("epochs")
            about += (f"; {key.label}'s students train the protocol's {epochs} epochs, as every row's (not the "
                      "reduced epochs of its students in the table above)")
            break
    about += "; accuracies, HLR and IOR in %, LRS and ARS (scores on [0, 1]) × 100; mean ± std"
    if dd_ranking:
        about += "; printed: as DD-Ranking's code prints them"
    return about


def _seeds_shown(results: Dict[str, Any]) -> str:
    """The seeds of the table's rows: the run's, or "N-M" where rows have fewer (a set given
    to the run after the students of the others, or a session stopped mid-way)."""
    counts = sorted({row["seeds"] for row in table_rows(results)} or {results["config"]["seeds"]})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def _labelled_per_batch(cfg: Dict[str, Any]) -> List[str]:
    """The labels of the table's methods whose students the teachers label per batch (INFER+Dyn,
    RDED: whatever the ``student`` section's labels; a set given to the run never is)."""
    return list(dict.fromkeys(key.label for key in set_entries(cfg, {}) if key.labelled_per_batch))


def _labels_taken(cfg: Dict[str, Any]) -> bool:
    """Whether a student of the table takes the ``student`` section's labels: a set of the table
    that the teachers do not label per batch (a run narrowed to INFER+Dyn and RDED has none)."""
    return any(not key.labelled_per_batch for key in set_entries(cfg, {}))


def _without_soft_labels(results: Dict[str, Any]) -> str:
    """The CR note's "; A and B without soft labels: ...": the table's methods whose students
    are labelled per batch (their sets' ratio counts no labels); "" where none is."""
    labels = _labelled_per_batch(results["config"])
    if not labels:
        return ""
    named = labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} and {labels[-1]}"
    return f"; {named} without soft labels: the teachers label every batch"


def _setting_text(name: str, value: Any) -> str:
    """A setting as the header names it: "r_bn 0.5", "crop_scale [0.08, 1]"."""
    def shown(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:g}"
        if isinstance(value, list):
            return "[" + ", ".join(shown(v) for v in value) + "]"
        return str(value)

    return f"{name} {shown(value)}"


# the student settings the header names where they differ from the recipe: the labels, then the
# augmentation and mixing (student.labels_text, augmentation_text), then the rest in StudentConfig's
# order; not the model and epochs (named first), the labels per batch (a method's: INFER+Dyn's), the
# evaluations during training (they change no student)
_STUDENT_HEADER_SKIPS = ("model", "epochs", "labels", "augmentation", "mix", "dynamic", "eval_every")


def _student_changes(cfg: Dict[str, Any], student: Dict[str, Any]) -> List[str]:
    """The header's "hard labels", "crop_flip, no mixing", "lr 0.01"...: the run's student
    settings ``student`` (:func:`_student_effective`) that differ from the recipe of its dataset;
    the labels with the methods whose students the teachers label per batch whatever they say
    ("hard labels (INFER+Dyn: the teachers' per batch)")."""
    from types import SimpleNamespace

    from .student import augmentation_text, labels_text, mixes

    recipe = _student_effective(cfg, {})
    changes = []
    if student["labels"] != recipe["labels"] and _labels_taken(cfg):
        per_batch = _labelled_per_batch(cfg)
        changes.append(labels_text(SimpleNamespace(**student))
                       + (f" ({', '.join(per_batch)}: the teachers' per batch)" if per_batch else ""))
    augmentation = augmentation_text(SimpleNamespace(**student))
    if augmentation != augmentation_text(SimpleNamespace(**recipe)):  # (alpha 0 reads "no mixing", as mix none)
        changes.append(augmentation)
    mixed = mixes(SimpleNamespace(**student))  # (where nothing is mixed the alpha changes nothing)
    changes += [_setting_text(name, value) for name, value in student.items()
                if name not in _STUDENT_HEADER_SKIPS and value != recipe.get(name)
                and (mixed or name != "mixup_alpha")]
    return changes


def _student_text(cfg: Dict[str, Any], student: Dict[str, Any]) -> str:
    """The header's "convnet, 400 epochs (INFER+Dyn: epochs/(M+1)), hard labels": the model and
    epochs the run's students train (``student``: the ``student`` section over the dataset's
    recipe, :func:`_student_effective`), those of the table's methods whose students train
    fewer, and the settings that differ from the recipe (:func:`_student_changes`)."""
    from ._text import count_text

    text = f"{student['model']}, {count_text(student['epochs'], 'epoch')}"
    reduced = list(dict.fromkeys(key.label for key in set_entries(cfg, {})
                                 if key.own is not None and key.own.reduced_student_epochs))
    if reduced:
        epochs = count_text(cfg["dynamic_epochs"], "epoch") if cfg.get("dynamic_epochs") else "epochs/(M+1)"
        text += f" ({', '.join(reduced)}: {epochs})"
    return ", ".join([text, *_student_changes(cfg, student)])


def _distillation_text(cfg: Dict[str, Any]) -> str:
    """The header's " Distillation beside the recipes: INFER: iterations 2, r_bn 0.5.": the
    options of each method that makes a set of the table (INFER+Dyn: INFER's) that differ from
    its recipe for the dataset (:func:`_method_effective`); "" where none does, or where the
    config is not one this version can parse (a results file of another version)."""
    sets = set_entries(cfg, {})
    makers = {key.made_as.method: key.made_as.own for key in sets if key.own is not None}.values()
    recipe = {**cfg, "recovery": {}}  # (the methods' defaults: no section, no shared settings)
    parts = []
    for method in makers:
        own = cfg.get(method.config_section) if method.config_section else \
            (cfg.get(METHOD_OPTIONS) or {}).get(method.name)
        try:
            given, default = _method_effective(method, cfg, own or {}), _method_effective(method, recipe, {})
        except (ValueError, TypeError, KeyError, AttributeError):
            return ""
        changes = [_setting_text(name, value) for name, value in given.items() if value != default.get(name)]
        if changes:
            parts.append(f"{method.label}: {', '.join(changes)}")
    return f" Distillation beside the recipes: {'; '.join(parts)}." if parts else ""


def _cr_text(results: Dict[str, Any], student: Dict[str, Any]) -> str:
    """What the CR counts, for the note above the table: the soft labels unless the students
    train on hard labels (CR_NOTES), and the methods whose sets count none."""
    if student["labels"] == "hard" and _labels_taken(results["config"]):
        return CR_NOTES["hard"] + _without_soft_labels(results)
    return f"images + soft labels + indices{_without_soft_labels(results)}"


def _methods_title(cfg: Dict[str, Any], results: Dict[str, Any]) -> str:
    """The report's title after the dataset: the methods of the table, in its order ("INFER,
    INFER+Dyn, Random"); a run of external sets only is titled by their labels."""
    return ", ".join(dict.fromkeys(key.label for key in set_entries(cfg, results.get("sets", {})))) or "no sets"


def _accounting_text(cfg: Dict[str, Any]) -> str:
    """" Budget accounting: fair." where a method of the table takes the run's accounting (INFER
    and INFER+Dyn); "" for a table of methods without one (random, SRe2L, sets given to the run)."""
    takes = any(key.own is not None and "accounting" in key.made_as.own.run_options for key in set_entries(cfg, {}))
    return f" Budget accounting: {cfg['accounting']}." if takes and "accounting" in cfg else ""


def markdown_report(results: Dict[str, Any], table: str, plots: Dict[str, str]) -> str:
    cfg = results["config"]
    teachers = ", ".join(
        f"{t['model']} ({100 * t['test_accuracy']:.2f}%)" if t.get("test_accuracy") is not None else t["model"]
        for t in results["teachers"])
    student = _student_effective(cfg, cfg.get(STUDENT_SECTION) or {})
    lines = [
        f"# {dataset_label(cfg['dataset'])}: {_methods_title(cfg, results)}",
        "",
        f"Teachers (M = {len(results['teachers'])}): {teachers}. Student: {_student_text(cfg, student)}, "
        f"final-epoch top-1 on the real test split over {_seeds_shown(results)} seed(s)."
        f"{_accounting_text(cfg)}{_distillation_text(cfg)}",
        f"CR: stored values / full training set values ({_cr_text(results, student)}). "
        "Feature dup.: mean same-class cosine similarity of the first teacher's penultimate features"
        + (" (–: undefined for sets of one image per class)." if any(
            results["sets"].get(str(key), {}).get("feature_duplication_note")
            for key in set_entries(cfg, results.get("sets", {}))) else "."),
        "",
        table,
        "",
    ]
    steps = (results.get("timing") or {}).get("steps") or {}
    if steps:  # what each step of this session cost (peak: resident memory of the main process)
        lines += ["| step (this session) | seconds | peak memory GiB |", "|---|---|---|"]
        lines += [f"| {name} | {step['seconds']:.1f} | "
                  f"{'–' if step.get('peak_rss_gib') is None else format(step['peak_rss_gib'], '.2f')} |"
                  for name, step in steps.items()]
        lines.append("")
    for shown in score_tables(results):
        lines += [f"DD-Ranking scores ({scores_note(shown)}):", "", format_score_table(shown), ""]
    lines += [f"![{name}]({os.path.basename(path)})" for name, path in plots.items()]
    return "\n".join(lines) + ("\n" if plots else "")

"""The whole chain from one config: teachers -> distilled sets -> soft labels -> students -> table.

    infer-fast run configs/fashion-mnist.yaml            # or run_pipeline(load_pipeline_config(path))

A run directory holds ``teachers/`` (trained teacher checkpoints), ``sets/<method>-ipc<N>/``
(distilled sets, relabelled in place), ``results.json`` (every measurement, rewritten
atomically after each step) and ``results.md`` (the table). Running the same config again
continues where it stopped: finished teachers, sets and student runs are kept (teachers and
recovery also resume inside a step from their own checkpoints).

Methods (the registry of ``infer_fast.methods``), all under one protocol (INFER_METHOD.md
§4-§6): ``infer`` (static soft labels), ``infer_dyn`` (the same set, teacher-ensemble labels
for every mixed batch, epochs reduced to round(epochs / (M + 1)) unless ``dynamic_epochs``
is given), ``random`` (ipc real images per class), ``sre2l`` (ipc images per class from
noise, same BN-matching loss) and the other registered methods (their options in
``method_options``). A set is relabelled only where the run reads its soft labels: not for
a method whose students are labelled per batch, nor for students of hard labels (``student:
{labels: hard}``), unless the scores' students learn static labels. Each (method, ipc)
reports the final-epoch top-1 of ``seeds`` students on the real test split (mean +-
population std), the compression ratio (images + soft labels + indices, the soft labels only
where the students learn them: INFER+Dyn stores none but needs the teachers while training,
marked in the table and drawn hollow in the plot) and the feature duplication
(INFER_METHOD.md §5) of its training images under the first teacher.

Under torchrun (``torchrun --nproc-per-node N -m infer_fast.cli run CONFIG``) the work is
split across the ranks: the teachers to train (the k-th on rank k mod N), INFER and SRe2L
recovery (their UFCs / image groups, inside ``distill_infer`` / ``distill_sre2l``) and the
student runs (the k-th left on rank k mod N, each a whole single-process student on that
rank's device). Rank 0 alone writes pretrained teachers, random sets, soft labels,
measurements, the scores (its whole students, one after another) and the results files, and
alone prints; the others wait for it and read what they need from disk (a shared file system
on several nodes). The results equal a single process's, and a stopped run continues with any
number of ranks. Before any work the ranks check that they run the same config and see the
same OUT, and a rank's refusal of its inputs stops every rank, each with its own line.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from . import distributed, interrupts
from ._io import TEMP, check_input_file, check_writable, hidden_sibling_owner, save_json_atomic, write_atomically
from .memory import release_freed_memory
from .meter import StepMeter
from .models import device_of
from .options import given_config
from .output_lock import INSIDE_LOCK, job_output_lock, output_lock
from .progress import say
from .results import (CR_NOTES, RESULTS_FILE, RUN_REPORT, data_place, format_table, load_results, markdown_report,
                      summarize, table_runs)
from .run_config import PipelineConfig, load_pipeline_config
from .set_keys import RunKey, SetKey

__all__ = [
    "PipelineConfig", "load_pipeline_config", "prepare_teachers", "run_pipeline",
    "summarize", "format_table", "set_directory",
]

# the folders a run writes in its directory: trained and pretrained teachers' checkpoints, the
# distilled sets (SetKey.directory_name), the students' per-epoch checkpoints (RunKey.checkpoint_name)
# and the decoded test split
TEACHERS_DIR, SETS_DIR, STUDENTS_DIR, CACHE_DIR = "teachers", "sets", "students", "cache"
RUN_FOLDERS = (TEACHERS_DIR, SETS_DIR, STUDENTS_DIR, CACHE_DIR)
# the scores' checkpoints (evaluate's ``checkpoints`` folder: the full-data run and the score students): one
# folder for all the sets (their files' names tell them apart, and sets share students), inside STUDENTS_DIR
# (so RUN_FOLDERS covers it)
SCORES_DIR = f"{STUDENTS_DIR}/scores"


# --------------------------------------------------------------------------------------
# the steps
# --------------------------------------------------------------------------------------

def _next_step(meter: StepMeter, name: str) -> None:
    """Begin the step ``name``: the memory the last one freed goes back to the system first
    (each step's peak is then its own, and the next step has it)."""
    release_freed_memory()
    meter.start(name)


def _say(progress: bool, text: str) -> None:
    """A progress message: what the run is doing (shown with progress only, on stderr)."""
    if progress:
        say(text)


def _stdout_unless(show: bool):
    """Drops what is printed unless ``show`` (only rank 0 prints)."""
    return contextlib.nullcontext() if show else contextlib.redirect_stdout(io.StringIO())


def _pretrained_teacher_path(out: str, i: int, entry: Dict[str, Any]) -> str:
    """Where the run writes its i-th teacher, ``entry`` = {model, pretrained}."""
    return str(Path(out) / TEACHERS_DIR / f"teacher{i}-{entry['model'].replace(':', '_')}-pretrained.pt")


def _check_pretrained_weights(cfg: PipelineConfig) -> None:
    """Before any work: one ValueError naming every pretrained weights file the run still
    needs (its pretrained teachers not yet written) and the local caches lack."""
    from .models import check_pretrained_weights

    check_pretrained_weights([(entry["model"], entry["pretrained"]) for i, entry in enumerate(cfg.teachers)
                              if entry.get("pretrained") and not os.path.exists(_pretrained_teacher_path(cfg.out, i, entry))])


def prepare_teachers(cfg: PipelineConfig, progress: bool = True, ranks: Optional[distributed.Ranks] = None) -> List[str]:
    """The teacher checkpoints of ``cfg``: given paths, pretrained weights written as
    checkpoints, or teachers trained (resuming) into ``<out>/teachers/``. Under torchrun
    (every rank calls this) the k-th teacher to train is trained on rank k mod world, on that
    rank's device, rank 0 writes the pretrained ones, and all return once every one is
    written. A teacher another process is writing (a teachers/ folder shared between runs) is
    waited for, then reused or refused (:func:`_teacher_lock`)."""
    out = Path(cfg.out)
    from ._text import count_text
    from .teacher import pretrained_teacher, train_teacher

    if ranks is None:
        ranks = distributed.Ranks()
        try:
            return prepare_teachers(cfg, progress, ranks)
        finally:
            ranks.close()
    rank, world = ranks.rank, ranks.world
    progress = progress and rank == 0
    _check_pretrained_weights(cfg)  # (run_pipeline checks first; here for direct callers)
    paths, pretrained, to_train = [], [], []  # to_train: (entry index, TeacherConfig, path)
    for i, entry in enumerate(cfg.teachers):
        if "path" in entry:
            path = str(entry["path"])
            check_input_file(path, f"teachers[{i}]: teacher checkpoint")
        elif entry.get("pretrained"):
            path = _pretrained_teacher_path(cfg.out, i, entry)
            pretrained.append((entry, path))
        else:
            teacher_cfg = cfg.teacher_config(i)
            teacher_cfg = dataclasses.replace(teacher_cfg, device=distributed.local_device(teacher_cfg.device))
            path = str(out / TEACHERS_DIR / f"teacher{i}-{teacher_cfg.model.replace(':', '_')}.pt")
            to_train.append((i, teacher_cfg, path))
        paths.append(path)
    # rank 0 looks for unstarted teachers before any rank writes one (for its messages only)
    fresh = ranks.from_rank0([i for i, _, path in to_train if not os.path.exists(path)])
    if rank == 0:  # one writer; the others wait at the barrier below
        for entry, path in pretrained:
            with _teacher_lock(path):
                pretrained_teacher(entry["model"], cfg.dataset, path, pretrained=entry["pretrained"],
                                   data_root=cfg.data_root)
    for k, (i, teacher_cfg, path) in enumerate(to_train):
        owner = k % world
        if i in fresh:
            where = f" on rank {owner}" if world > 1 else ""
            _say(progress, f"teacher {i + 1}/{len(cfg.teachers)}: training {teacher_cfg.model} for "
                           f"{count_text(teacher_cfg.epochs, 'epoch')}{where} -> {path}")
        if owner == rank:
            with _teacher_lock(path), _stdout_unless(rank == 0):  # train_teacher prints some lines unconditionally
                train_teacher(teacher_cfg, path, progress=progress)
    ranks.barrier()  # every teacher written before any rank loads one
    return paths


def _teacher_lock(path: str):
    """The lock of the teacher checkpoint ``path`` (the one ``infer-fast teacher --out`` takes),
    waited for: the run's lock does not cover a teachers/ folder shared between runs, and a run
    that finds another writing the teacher waits, then continues it, reuses it or is refused as
    train_teacher decides from the file, instead of both training it into one file."""
    return output_lock(path, "teacher checkpoint", wait=True)


def _test_split(cfg: PipelineConfig, out: Path, ranks: distributed.Ranks, progress: bool):
    """The real test split the students are evaluated on. Read from image files, it is decoded
    once into ``<out>/cache/`` (by rank 0; the others wait and map the same file) unless
    ``decode_cache`` is off, when every evaluation streams it from the files. (The default
    ``decode_cache: true`` caches only a split that does not fit in memory: no line says a
    small one is not cached.)"""
    from .data import load_test_split

    cache = str(out / CACHE_DIR) if cfg.decode_cache else None
    if ranks.rank == 0:
        test = load_test_split(cfg.dataset, cfg.data_root, cache, progress=progress, cache_asked=False)
    ranks.barrier()
    return test if ranks.rank == 0 else load_test_split(cfg.dataset, cfg.data_root, cache)


def _set_list(cfg: PipelineConfig, out: Path) -> List[Tuple[SetKey, Path]]:
    """(key, directory) of every set of the run: ours for each ipc, then the sets given to it
    (``external``) at the ipc their budget records."""
    ours = [SetKey(method, ipc) for ipc in cfg.ipc for method in cfg.methods]
    sets = [(key, out / SETS_DIR / key.directory_name) for key in ours]
    sets += [(_external_key(label, directory), Path(directory)) for label, directory in cfg.external.items()]
    return sets


def _recorded_directory(out: Path, key: SetKey, directory: Path) -> str:
    """The directory of the set ``key`` as results.json records it (``sets[key].directory``): ours
    relative to the run directory (``sets/infer-ipc10``: a run continued from another working
    directory, or moved or copied, still names its own sets), a set given to the run
    (``external``) by its absolute real path, as ``external_sets`` records it."""
    if key.own is None:
        return data_place(str(directory))
    return directory.relative_to(out).as_posix()


def set_directory(run_dir, record: Dict[str, Any]) -> Path:
    """The directory of a set that the results.json of the run directory ``run_dir`` records
    (``record``: its ``results["sets"][key]``), as ``run_dir`` is spelt: the recorded directory
    is relative to the run directory (:func:`_recorded_directory`), or absolute. A results.json
    of before recorded the run's own sets relative to the working directory of its session
    (``runs/x/sets/infer-ipc10``): read as the set of that name in this run directory."""
    recorded = Path(record["directory"])
    if recorded.is_absolute() or recorded.parts[:1] == (SETS_DIR,):
        return Path(run_dir) / recorded
    return Path(run_dir) / SETS_DIR / recorded.name


def _external_key(label: str, directory: str) -> SetKey:
    """The key of the set given to the run as ``external: {label: directory}``, at the ipc its
    budget records."""
    from .storage import read_manifest

    ipc = read_manifest(directory).get("budget", {}).get("ipc")
    if not isinstance(ipc, int) or ipc < 1:
        raise ValueError(f"external set {directory} records no budget ipc (images per class)")
    return SetKey.external(label, ipc)


def _one_image_per_class(sets: List[Tuple[SetKey, Path]]) -> Tuple[SetKey, ...]:
    """The sets that will train on one image per class, where feature duplication (a similarity
    between the images of a class) is undefined: a set of images at ipc 1. INFER's layout trains
    on K natural and K*M composed images per class (at least 2)."""
    from .storage import read_manifest, set_layout

    def layout(key: SetKey, directory: Path) -> Optional[str]:
        return set_layout(key.made_as.method if key.own is not None else read_manifest(directory)["method"])

    return tuple(key for key, directory in sets if key.ipc < 2 and layout(key, directory) != "compensated")


def _make_set(cfg: PipelineConfig, key: SetKey, directory: Path, teacher_paths: List[str], progress: bool) -> float:
    """Distill one set (resuming its recovery checkpoint if any); returns the seconds spent."""
    from .distill.checkpoints import recovery_checkpoints
    from .distill.run import recovery_checkpoint_path
    from .methods import DistillRequest

    start = time.perf_counter()
    maker = key.made_as.own  # (INFER+Dyn trains on INFER's set)
    # continue an interrupted recovery of this set, if there is one
    resume = maker.resumable and bool(recovery_checkpoints(recovery_checkpoint_path(directory)))
    DistillRequest(
        method=maker.name, dataset=cfg.dataset, ipc=key.ipc, out_dir=directory,
        teacher_paths=teacher_paths if maker.uses_teachers else (), options=cfg.method_options_of(maker.name),
        seed=cfg.seed, data_root=cfg.data_root, resume=resume, progress=progress, device=cfg.device).make_set()
    return time.perf_counter() - start


def _ratio_without_soft_labels(ds, full: Dict[str, Any]) -> Dict[str, Any]:
    """The set's compression ratio ``full`` (ds.compression_ratio) without its soft labels."""
    from .storage import compression_ratio_from_counts

    return compression_ratio_from_counts(
        stored_images=ds.num_stored_images(), image_shape=(ds.channels, ds.height, ds.width), soft_labels=0,
        num_classes=ds.num_classes, full_train_size=full["full_train_size"], index_elements=full["index_elements"],
    )


def run_pipeline(cfg: PipelineConfig, progress: bool = True) -> Dict[str, Any]:
    """Run (or continue) the experiment ``cfg``; returns the results dict (also in
    ``<out>/results.json``, the table in ``<out>/results.md``). Under torchrun every rank
    calls this (see the module docstring for the split) and every rank returns the results."""
    given_config("cfg", cfg, PipelineConfig)
    _check_ranks_run_the_same(cfg)
    # cfg is valid (checked when made). Before any work (the run directory, the test split): the
    # machine has the weights, and the data the images of every class its sets take. Not in
    # validate: a config loads on a machine without them (another node, a login host). Under
    # torchrun a rank's refusal stops every rank, each with a line.
    with distributed.same_outcome():
        _check_pretrained_weights(cfg)
        check_writable(cfg.out, "run directory", kind="inside")  # (read-only media, a file in the way)
        check_run_directory(Path(cfg.out))
        inputs = _check_inputs(cfg)
        # (each rank its own data_root: every rank counts its train split's classes)
        _check_class_counts(cfg, progress and distributed.rank_and_world()[0] == 0)
    ranks = distributed.Ranks()
    out = Path(cfg.out)
    created = not out.exists()
    try:
        # (before the teachers train: each node would train into its own OUT, then miss the others')
        distributed.check_ranks_share_folder(str(out / RESULTS_FILE), what="OUT", make=True)
        with job_output_lock(out, "run directory", inside=True, folders=RUN_FOLDERS), \
                interrupts.continued_by("call run_pipeline(cfg) again to continue where it stopped"):
            return _run(cfg, progress and ranks.rank == 0, ranks, inputs)
    except BaseException:
        if created and ranks.rank == 0 and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # refused before anything was written in it: no empty run directory left
        raise
    finally:
        ranks.close()


# The settings a rank may have of its own under torchrun: where its node keeps the data, the
# device it computes on (a teacher's, the students' too), and OUT as spelt (a node may mount the
# shared folder elsewhere: check_ranks_share_folder finds whether the ranks see the same one).
PER_RANK_SETTINGS = ("data_root", "device", "out")


def _check_ranks_run_the_same(cfg: PipelineConfig) -> None:
    """Under torchrun, before any work: every rank runs the same config (its file and the
    options given), but for PER_RANK_SETTINGS; else a rank trained its share of the students
    under its own settings, mixed into rank 0's results, or the ranks parted ways (another
    list of sets) and deadlocked. ValueError on every rank naming the first rank and setting
    that differ ("student.epochs": a section's field on its own)."""
    from .run_identity import dotted

    def shared(value: Any) -> Any:  # (a section, a teacher entry: without its per-rank settings)
        return {k: v for k, v in value.items() if k not in PER_RANK_SETTINGS} if isinstance(value, dict) else value

    settings = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))  # (JSON-able: as results.json holds it)
    settings = {name: shared(value) for name, value in settings.items() if name not in PER_RANK_SETTINGS}
    settings["teachers"] = [shared(entry) for entry in settings["teachers"]]
    sections = [name for name, value in settings.items() if isinstance(value, dict)]
    distributed.check_ranks_agree(dotted(settings, sections),
                                  "every rank must run the same config, with the same options")


# what a run writes in its directory before its results file (an interrupted first session)
RUN_ENTRIES = (*RUN_FOLDERS, INSIDE_LOCK)


def check_run_directory(out: Path) -> None:
    """Before any work: ``out`` is new, empty or a run's directory: one holding a results file,
    or only what a run writes before its first (its teachers, sets...). Any other folder (a
    distilled set, an export) is refused rather than filled with a run's files."""
    from ._text import first_names

    if not out.is_dir():
        return
    entries = [entry.name for entry in out.iterdir()]
    foreign = [name for name in entries if name not in RUN_ENTRIES and hidden_sibling_owner(name, TEMP) != RESULTS_FILE]
    if foreign and RESULTS_FILE not in entries:
        shown = first_names(sorted(foreign), 3)
        raise ValueError(f"out (--out): {out} exists and is not a run directory (it holds {shown}): choose a new "
                         "or empty directory, or an earlier run's")


class _Inputs(NamedTuple):
    """What the checks before any work read (:func:`_check_inputs`), passed on to the run:
    {label: external_identity} of the external sets, and (paths, model_digest of each) of the
    teachers given by path where those checks hashed them (else None)."""

    external: Dict[str, Dict[str, str]]
    path_teachers: Optional[Tuple[List[str], List[str]]] = None


def _check_inputs(cfg: PipelineConfig) -> _Inputs:
    """Before any work: every teacher checkpoint given by path is a readable file, and every
    external set loads (manifest, files, digests), records its ipc and has soft labels where
    the run reads them (:func:`_soft_labels_needed`: another's set is never relabelled in its
    directory; a run used to write its own sets first and stop at a corrupt external one),
    labelled by the run's teachers where its scores need that (:func:`_check_labelling_teachers`;
    when every teacher is given by path: else once they are prepared, :func:`_load_teachers`).
    Returns the _Inputs: {label: external_identity} of the external sets (read here once,
    checked against the results file's record) and the digests of the teachers given by path
    where they were computed (the run's teachers are not hashed again)."""
    from .results import external_identity
    from .storage import load_distilled

    for i, entry in enumerate(cfg.teachers):
        if "path" in entry:
            check_input_file(str(entry["path"]), f"teachers[{i}]: teacher checkpoint")
    path_teachers = None  # (paths, digests) of the teachers given by path, loaded once a set needs them
    identities = {}
    for label, directory in cfg.external.items():
        ds = load_distilled(directory)
        key = _external_key(label, directory)
        if _soft_labels_needed(cfg, key) and not ds.has_soft_labels:
            readers = "its students learn" if _student_labels(cfg, key) == "static" else \
                "the scores' students of static labels learn"
            raise ValueError(f"external set {directory} has no soft labels, which {readers}: import it with "
                             "--soft-labels, or run `infer-fast relabel` on it first")
        if _scored_with_static_labels(cfg, key) and _teachers_given_by_path(cfg):
            path_teachers = path_teachers or _path_teacher_digests(cfg)
            _check_labelling_teachers(cfg, label, ds, *path_teachers)
        identities[label] = external_identity(directory, ds)
    return _Inputs(identities, path_teachers)


def _teachers_given_by_path(cfg: PipelineConfig) -> bool:
    """Whether every teacher of the run is a checkpoint given by path (none trained or written by it)."""
    return all("path" in entry for entry in cfg.teachers)


def _path_teacher_digests(cfg: PipelineConfig) -> Tuple[List[str], List[str]]:
    """(paths, model_digest of each) of the run's teachers, every one given by path, refused
    when two hold the same weights (teacher.check_distinct_teachers: a copy under another name)."""
    from ._io import model_digest
    from .teacher import check_distinct_teachers, load_teacher

    paths = [str(entry["path"]) for entry in cfg.teachers]
    digests = [model_digest(load_teacher(path)[0]) for path in paths]
    check_distinct_teachers(digests, paths)
    return paths, digests


def _check_labelling_teachers(cfg: PipelineConfig, label: str, ds, paths: List[str], digests: List[str]) -> None:
    """Before any set or student work: the external set ``label`` (``ds``), whose scores label
    their random subsets with the run's teachers (``paths``, ``digests``: model_digest of each),
    was relabelled by them (evaluate.labelling_teachers), else a ValueError saying how to
    relabel it and, where the run directory's results already record the set under ``label``
    (relabelling changes it: results._check_external_sets), that it needs a new label."""
    from .evaluate import labelling_teachers

    directory = cfg.external[label]
    todo = f"relabel it with the run's teachers (infer-fast relabel {directory} --teachers {','.join(paths)})"
    results = Path(cfg.out) / RESULTS_FILE
    if label in _recorded_external_labels(results):
        todo += (f", then give it a new label in external ({results} records {label} as the set before: a label "
                 "names one set for the life of a run directory), or choose another out directory")
    try:
        labelling_teachers(ds, digests, True, todo=todo)
    except ValueError as exc:
        raise ValueError(f"external: {label}: {exc}") from None


def _recorded_external_labels(results: Path) -> List[str]:
    """The labels of the external sets that the results file ``results`` records (none when there
    is no file, or none readable: load_results says why)."""
    try:
        with open(results, encoding="utf-8") as f:
            recorded = json.load(f).get("external_sets")
    except (OSError, ValueError, AttributeError):
        return []
    return list(recorded) if isinstance(recorded, dict) else []


def _check_class_counts(cfg: PipelineConfig, progress: bool) -> None:
    """Before any work: every class of the train split has the real images that each set the
    run still makes takes (Method.images_per_class: random's ipc, INFER's K natural sets,
    RDED's candidates), counted from the split's labels (a folder split is scanned, not
    decoded). Making the set refuses it too, but only after the teachers trained (and RDED's
    after every other set)."""
    from .checks import check_images_per_class, split_label
    from .data import load_dataset

    to_make = dict.fromkeys(key.made_as for key, directory in _set_list(cfg, Path(cfg.out))
                            if key.own is not None and not directory.exists())  # (INFER+Dyn's set is INFER's)
    needing = [key for key in to_make if key.own.images_per_class is not None]
    if not needing:
        return
    train = load_dataset(cfg.dataset, "train", data_root=cfg.data_root, in_memory=False, progress=progress)
    counts = train.class_counts().tolist()
    for key in needing:
        method = key.own
        need = method.images_per_class(cfg.options_for(method.name), key.ipc, train.spec, len(cfg.teachers))
        if need.option == "ipc":
            note = f" ({need.note})" if need.note else ""
            because, remedy = f"{method.name} at ipc {key.ipc}{note}", "lower ipc (--ipc)"
        else:  # (one of its own options: said as the config gives it)
            given = f"{{{need.option}: N}}"
            given = (f"{method.config_section}: {given}" if method.config_section
                     else f"method_options: {{{method.name}: {given}}}")
            because, remedy = f"{method.name} with {need.option}={need.count}", f"lower it ({given})"
        check_images_per_class(counts, need.count, split_label(train), because, remedy)


def _describe_teacher(meta: Dict[str, Any]) -> str:
    """A teacher for the ``teachers:`` line: its model and recorded test accuracy."""
    if meta.get("test_accuracy") is not None:
        return f"{meta['model']} {100 * meta['test_accuracy']:.2f}%"
    pretrained = "pretrained, " if meta.get("config", {}).get("pretrained") else ""
    return f"{meta['model']} ({pretrained}accuracy not measured)"


@dataclass
class _Session:
    """What the steps of one session of a run share: the results dict is rank 0's to write."""

    cfg: PipelineConfig
    ranks: distributed.Ranks
    progress: bool
    out: Path
    results: Dict[str, Any]
    meter: StepMeter  # seconds and peak memory of every step this session ran (results.json: timing.steps)
    started: float  # (time.perf_counter())
    no_duplication: Tuple[SetKey, ...] = ()  # the sets whose feature duplication is undefined

    @property
    def results_path(self) -> Path:
        return self.out / RESULTS_FILE

    def save(self) -> None:
        save_json_atomic(self.results, str(self.results_path))

    def say(self, text: str) -> None:
        _say(self.progress, text)

    def notice(self, text: str) -> None:
        """A notice: where the run does other than its config may lead one to expect (a
        measurement skipped); printed (stdout) by rank 0 even without progress (``run --quiet``),
        unlike :meth:`say`'s progress messages."""
        if self.ranks.rank == 0:
            print(text, flush=True)

    def report(self, text: str) -> None:
        """A line of the finished run's results (its table, where they are): stdout, with
        progress only (without, ``run --quiet``'s caller prints them: cli.cmd_run)."""
        if self.progress:
            print(text, flush=True)

    def step(self, name: str) -> None:
        _next_step(self.meter, name)


def _run(cfg: PipelineConfig, progress: bool, ranks: distributed.Ranks, inputs: _Inputs) -> Dict[str, Any]:
    session = _open_session(cfg, progress, ranks, inputs.external)
    sets = _set_list(cfg, session.out)  # (key, directory): ours, then those given to the run
    if cfg.feature_duplication:  # (decided before any work: a note now, not a surprise after a set)
        session.no_duplication = _one_image_per_class(sets)
        unmeasured = [key for key in session.no_duplication if str(key) not in session.results["sets"]]
        if unmeasured:  # (a set measured before was skipped then: nothing to say)
            which = ", ".join(f"{key.label} ipc {key.ipc}" for key in unmeasured)
            session.notice(f"feature duplication: skipped for {which} (undefined with one training image per class)")
    session.step("test split")
    test = _test_split(cfg, session.out, ranks, progress)
    _check_set_classes(sets, test)
    # 1. trained across the ranks, then loaded by every rank
    teacher_paths, teachers, records = _load_teachers(session, test, inputs.path_teachers)
    for key, directory in sets:  # 2. distilled sets, relabelled and measured
        _prepare_set(session, key, directory, teacher_paths, teachers)
    _train_students(session, sets, teachers, test)  # 3. students
    if cfg.scores and ranks.rank == 0:  # (rank 0 alone: the others wait at the end)
        session.step("scores")
        _score_sets(cfg, sets, session.results, teachers, records, session.save, progress)
        session.meter.stop()
    if ranks.rank == 0:
        _write_report(session)
    if ranks.world > 1:
        ranks.barrier()  # the others return the results rank 0 wrote
        if ranks.rank != 0:
            with open(session.results_path, encoding="utf-8") as f:
                return json.load(f)
    for folder in (SCORES_DIR, STUDENTS_DIR):  # (every rank's checkpoints removed: empty, they were left behind)
        with contextlib.suppress(OSError):  # (missing, or holding what is kept: the full-data checkpoint)
            (session.out / folder).rmdir()
    return session.results


def _open_session(cfg: PipelineConfig, progress: bool, ranks: distributed.Ranks,
                  external: Dict[str, Dict[str, str]]) -> _Session:
    """The run directory made, its results file read (every rank reads it: a results file of
    other settings or external sets stops them all alike; rank 0's copy is the one kept and
    written)."""
    started = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    continued = (out / RESULTS_FILE).exists()
    results = load_results(out / RESULTS_FILE, cfg, external)
    # this session's until it finishes (_write_report): an earlier session's finish time, session
    # seconds and table (of its config) do not describe it, stopped or failed
    results["finished"] = None
    results.pop("table", None)
    timing = results.setdefault("timing", {})
    timing["session_s"] = None
    timing["steps"] = {}
    session = _Session(cfg, ranks, progress, out, results, StepMeter(timing["steps"]), started)
    if continued and ranks.rank == 0:  # (accepted: a script reading the file sees a run going on)
        session.save()
    return session


def _check_set_classes(sets: List[Tuple[SetKey, Path]], test) -> None:
    """Before any work: every set already on disk (given to the run, or made by an earlier
    session, maybe from other data) records the classes of the ``test`` split its students are
    scored on, as student.check_test_set would find each only when its students train (read
    from the manifests: no set is loaded)."""
    from .checks import check_class_names, split_label
    from .storage import read_manifest
    from .student import SCORED_ON_OTHER_CLASSES

    for _, directory in sets:
        if directory.exists():
            check_class_names(read_manifest(directory).get("class_names"), test.spec.class_names,
                              f"the set {str(directory)!r}", split_label(test), SCORED_ON_OTHER_CLASSES)


def _load_teachers(session: _Session, test, path_teachers: Optional[Tuple[List[str], List[str]]] = None
                   ) -> Tuple[List[str], List[Any], List[Dict[str, Any]]]:
    """The teachers' checkpoint paths, models and records (path, model, test accuracy, training
    seconds), prepared (trained across the ranks) and loaded by every rank, each checked
    against the run's data (the ``test`` split: its classes, by count and name, are the
    training split's), no two holding the same weights (teacher.check_distinct_teachers), and,
    where the run trained or wrote some of them, as the labelling teachers of the external sets
    its scores need them to be (_check_inputs checks those of teachers given by path; their
    digests, ``path_teachers``, are not computed again); rank 0 records them. All before any
    set work."""
    from ._io import model_digest
    from .storage import load_distilled
    from .teacher import check_distinct_teachers, load_teachers_for_split

    cfg = session.cfg
    t0 = time.perf_counter()
    session.step("teachers")
    teacher_paths = prepare_teachers(cfg, session.progress, session.ranks)
    teachers, records, described = [], [], []
    loaded = load_teachers_for_split(teacher_paths, cfg.dataset, test, distributed.local_device(cfg.device))
    for path, (model, meta) in zip(teacher_paths, loaded):
        teachers.append(model)
        records.append({"path": path, "model": meta["model"], "test_accuracy": meta.get("test_accuracy"),
                        "train_seconds": meta.get("elapsed_s")})
        described.append(_describe_teacher(meta))
    if path_teachers is not None and path_teachers[0] == teacher_paths:  # (hashed and checked distinct already)
        digests = path_teachers[1]
    else:
        digests = [model_digest(model) for model in teachers]
        check_distinct_teachers(digests, teacher_paths)
    if not _teachers_given_by_path(cfg):
        for label, directory in cfg.external.items():
            if _scored_with_static_labels(cfg, _external_key(label, directory)):
                _check_labelling_teachers(cfg, label, load_distilled(directory), teacher_paths, digests)
    if session.ranks.rank == 0:
        session.results["teachers"] = records
        session.say("teachers: " + ", ".join(described))
        session.results.setdefault("timing", {})["teachers_s_this_session"] = time.perf_counter() - t0
        session.save()
    return teacher_paths, teachers, records


def _prepare_set(session: _Session, key: SetKey, directory: Path, teacher_paths: List[str], teachers: List[Any]) -> None:
    """One set made (unless on disk), relabelled and measured: its compression ratio and feature
    duplication. Rank 0 decides what the set needs (the others must not look at a directory it
    may be rewriting); INFER and SRe2L recovery need every rank, the rest is rank 0's."""
    rank, results = session.ranks.rank, session.results
    twin = key.made_as if key.made_as != key else None  # the set it trains on (INFER+Dyn: INFER's)
    recorded = results["sets"].get(str(key)) if rank == 0 else None  # (by an earlier session)
    step = None
    if rank == 0:
        step = ("make" if not directory.exists() else
                "done" if recorded is not None and _record_stands(session.cfg, key, directory, recorded) else "measure")
    step = session.ranks.from_rank0(step)
    if step == "done":
        if rank == 0:  # (recorded by a session of before maybe as spelt from its working directory)
            recorded["directory"] = _recorded_directory(session.out, key, directory)
        return
    session.step(f"set {key}")
    seconds = None  # a set found on disk was not timed by this run
    if step == "make":
        session.say(f"distilling {key.label} ipc {key.ipc} -> {directory}")
        if key.made_as.own.all_ranks or rank == 0:  # recovery: every rank; the rest: rank 0
            seconds = _make_set(session.cfg, key, directory, teacher_paths, session.progress)
    if rank != 0:
        return
    # measured before: this set (under other labels) or the set it trains on; the same images
    measured = recorded if step == "measure" and recorded is not None else \
        results["sets"].get(str(twin)) if twin is not None else None
    if step == "measure" and measured is not None:  # made as that method's set, or by an earlier session
        seconds = measured.get("distill_seconds")
    results["sets"][str(key)] = _measure_set(session, key, directory, seconds, measured, teachers)
    session.save()


def _student_labels(cfg: PipelineConfig, key: SetKey) -> str:
    """What the students of the set ``key`` learn from, a key of CR_NOTES: "per-batch" (the
    teachers label every batch: INFER+Dyn, RDED), "hard" (``student: {labels: hard}``) or
    "static" (its stored soft labels). (A method's own student settings never choose the labels:
    RDED's are its augmentation.)"""
    if key.labelled_per_batch:
        return "per-batch"
    return "hard" if cfg.student_config(key.method, 0, len(cfg.teachers)).labels == "hard" else "static"


def _soft_labels_needed(cfg: PipelineConfig, key: SetKey) -> bool:
    """Whether the run reads the stored soft labels of the set ``key``: its students learn them,
    or its scores' soft-label students do (:func:`_scored_with_static_labels`)."""
    return _student_labels(cfg, key) == "static" or _scored_with_static_labels(cfg, key)


def _scored_with_static_labels(cfg: PipelineConfig, key: SetKey) -> bool:
    """Whether the run's scores of the set ``key`` train on its stored soft labels (a protocol of
    static labels), beside random subsets labelled by the run's teachers: those must have
    labelled the set too (evaluate.labelling_teachers)."""
    protocol = cfg.score_protocol()
    return protocol is not None and _set_protocol(protocol, key).soft_labels == "static"


def _record_stands(cfg: PipelineConfig, key: SetKey, directory: Path, recorded: Dict[str, Any]) -> bool:
    """Whether an earlier session's record of the set ``key`` holds for this one: its
    compression ratio counted what the students learn now (the ``student`` settings may change
    before any student trained: hard labels, then soft), and the set stores soft labels where
    the run now reads them (say, scores turned on after a run of hard labels)."""
    from .storage import read_manifest

    labels = _student_labels(cfg, key)
    # (a record that predates the note counted what its run's students learned: it stands)
    if recorded.get("compression_ratio_note", CR_NOTES[labels]) != CR_NOTES[labels]:
        return False
    # (a manifest that predates the counts: its set was relabelled, as every set then)
    return not _soft_labels_needed(cfg, key) or read_manifest(directory).get("counts", {}).get("soft_labels", True)


def _measure_set(session: _Session, key: SetKey, directory: Path, seconds: Optional[float],
                 measured: Optional[Dict[str, Any]], teachers: List[Any]) -> Dict[str, Any]:
    """The record of one set (rank 0): relabelled first where the run reads its soft labels
    (:func:`_soft_labels_needed`: not where the students train on hard labels or on the teachers'
    labels per batch, unless the scores need them); ``measured``: a record of the same images
    (the set it trains on, or this one's by an earlier session), whose feature duplication it
    shares."""
    from .storage import DistilledDataset, load_distilled, save_distilled
    from .relabel import relabel
    from .student import feature_duplication

    cfg, progress = session.cfg, session.progress
    labels = _student_labels(cfg, key)
    ds = load_distilled(directory)
    # (an external set lacking them was refused before any work, _check_inputs: only ours are rewritten)
    if _soft_labels_needed(cfg, key) and not ds.has_soft_labels:
        session.step(f"relabel {key}")
        relabel(ds, teachers, device=str(device_of(teachers[0])), progress=progress)
        save_distilled(ds, directory, overwrite=True, progress=progress)
    info = {
        "directory": _recorded_directory(session.out, key, directory), "distill_seconds": seconds,
        "training_images": ds.num_training_images(), "stored_images": ds.num_stored_images(),
        "budget": ds.budget,
    }
    # (the soft labels the students do not learn are not counted, stored or not)
    info["compression_ratio_percent"] = _compression_ratio(cfg, key, ds, with_soft_labels=labels == "static")["percent"]
    info["compression_ratio_note"] = CR_NOTES[labels]
    if cfg.feature_duplication and key in session.no_duplication:
        info["feature_duplication"] = None  # (a pairwise similarity within classes)
        info["feature_duplication_note"] = "undefined: one training image per class"
    elif cfg.feature_duplication and measured is not None and measured.get("feature_duplication") is not None:
        info["feature_duplication"] = measured["feature_duplication"]  # the same images
    elif cfg.feature_duplication:
        session.step(f"feature duplication {key}")
        streamed = DistilledDataset(ds, hard_only=True)
        info["feature_duplication"] = feature_duplication(streamed.iter_chunks(), ds.hard_labels(), teachers[0],
                                                          progress=progress)
    return info


def _compression_ratio(cfg: PipelineConfig, key: SetKey, ds, with_soft_labels: bool = True) -> Dict[str, Any]:
    """The set's compression ratio, its stored soft labels counted only ``with_soft_labels``
    (its students learn them: :func:`_student_labels`)."""
    from .data import load_dataset

    full_train_size = None  # (the set's own)
    if ds.full_train_size is None and key.own is None:  # (an import may not know it: count the split, a scan)
        full_train_size = len(load_dataset(cfg.dataset, "train", data_root=cfg.data_root, in_memory=False))
    ratio = ds.compression_ratio(full_train_size=full_train_size)
    return ratio if with_soft_labels else _ratio_without_soft_labels(ds, ratio)


def _train_students(session: _Session, sets: List[Tuple[SetKey, Path]], teachers: List[Any], test) -> None:
    """The student runs left, the k-th on rank k mod world, each a whole student trained in one
    process (no DDP: small students train far faster whole than split per batch); rank 0
    records every one."""
    from .storage import load_distilled

    cfg, ranks, results = session.cfg, session.ranks, session.results
    rank, world = ranks.rank, ranks.world
    directories = dict(sets)
    total = len(sets) * cfg.seeds
    todo = None
    if rank == 0:
        todo = [key.run(seed) for key, _ in sets for seed in range(cfg.seeds) if str(key.run(seed)) not in results["runs"]]
    # rank 0 sends the list once every set is written and relabelled: no rank reads one before
    todo = ranks.from_rank0(todo)
    done = total - len(todo)
    if world > 1 and todo:
        session.say(f"students: {len(todo)} run(s) left, split across {world} ranks (rank 0's shown)")
    ds, ds_key = None, None
    unrecorded = []  # this rank's finished runs for rank 0 to record; their checkpoints stay until then
    for k, run_key in enumerate(todo):
        if k % world != rank:
            continue
        session.step(f"student {run_key}")
        if ds_key != run_key.set_key:
            ds, ds_key = load_distilled(directories[run_key.set_key]), run_key.set_key
        record, ckpt = _train_student(session, run_key, ds, teachers, test, f"{done + k + 1}/{total}")
        if rank == 0:
            results["runs"][str(run_key)] = record
            session.save()
            ckpt.unlink()
        else:
            unrecorded.append((str(run_key), record, str(ckpt)))
    session.meter.stop()
    shares = ranks.gather(unrecorded)  # waits for the slowest rank
    if world > 1:
        if rank == 0:
            for share in shares[1:]:
                results["runs"].update((key, record) for key, record, _ in share)
            session.save()
        ranks.barrier()  # recorded: each rank removes the checkpoints of its runs
        for _, _, ckpt in unrecorded:
            Path(ckpt).unlink()


def _train_student(session: _Session, run_key: RunKey, ds, teachers: List[Any], test,
                   position: str) -> Tuple[Dict[str, Any], Path]:
    """One student run (``position``: "k/total" for the progress line), continuing from its
    per-epoch checkpoint; returns its record and the checkpoint (removed once recorded)."""
    from ._text import count_text
    from .methods.registry import set_student_settings
    from .student import train_student

    scfg = session.cfg.student_config(run_key.method, run_key.seed, len(session.cfg.teachers), set_student_settings(ds))
    scfg = dataclasses.replace(scfg, device=distributed.local_device(scfg.device))
    session.say(f"student {position}: {run_key.set_key.label} ipc {run_key.ipc} seed {run_key.seed} "
                f"({scfg.model}, {count_text(scfg.epochs, 'epoch')}, {ds.num_training_images()} training images)")
    # per-epoch checkpoint: a killed run continues from its last epoch
    ckpt = session.out / STUDENTS_DIR / run_key.checkpoint_name
    ckpt.parent.mkdir(exist_ok=True)
    run = train_student(ds, test, scfg, teachers=teachers if scfg.dynamic else None, progress=session.progress,
                        checkpoint=str(ckpt), resume=True, ddp=False)
    record = {name: run[name] for name in ("final_accuracy", "best_accuracy", "elapsed_s", "steps", "num_training_images")}
    record["epochs"] = scfg.epochs
    # the test accuracies measured during training (every eval_every epochs, and the last): the curves' data
    record["history"] = [{"epoch": h["epoch"], "test_accuracy": h["test_accuracy"]}
                         for h in run["history"] if "test_accuracy" in h]
    return record, ckpt


def _write_report(session: _Session) -> None:
    """The finished results (rank 0): results.json with the table, the plots and results.md."""
    from .data import dataset_label
    from .plots import write_plots

    results, out = session.results, session.out
    seconds = results["timing"]["session_s"] = time.perf_counter() - session.started  # (the one printed below)
    results["table"] = summarize(results)
    table = format_table(results)
    plots = write_plots(results, out)
    # the scores of this session's protocol only (the file keeps the others' for a session under theirs)
    report = markdown_report({**results, "scores": _standing_scores(session.cfg, results)}, table, plots)
    write_atomically(out / RUN_REPORT, lambda tmp: Path(tmp).write_text(report, encoding="utf-8"), fsync=False)
    # finished last: a run stopped before (in the plots, say) is not recorded as done with a stale report
    results["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    session.save()
    session.report("\n" + table)
    session.report(f"\n{dataset_label(session.cfg.dataset)}: {len(table_runs(results))} student runs; results in "
                   f"{session.results_path} and {out / RUN_REPORT} ({seconds:.0f} s this session)")


def _score_sets(cfg: PipelineConfig, sets: List[Tuple[SetKey, Path]], results: Dict[str, Any],
                teachers: List[Any], records: List[Dict[str, Any]], save, progress: bool) -> None:
    """DD-Ranking's scores of every set under the protocol ``cfg.scores`` names (infer-fast
    evaluate's with the run's student and seeds; or DD-Ranking's, ``seeds`` rounds; the sets of
    methods labelled per batch (INFER+Dyn, RDED) have no static labels: they score with
    per-batch labels, as DD-Ranking scores each method in its own label mode); the full-data
    accuracy is DD-Ranking's cached value or the recorded one of the first teacher of the
    student's architecture that records one, else trained. Each set's report is saved as it is
    done; a rerun keeps a report made under the same protocol settings (:func:`_protocol_changes`)
    and scores the set again under others (more seeds, another weight...). A student two sets
    share (a random subset of the same ipc, the hard-label runs of the same images) is trained
    once per session (evaluate's ``reuse`` memo). The full-data run and the students are
    checkpointed in SCORES_DIR after every epoch: a stopped run continues them; once every set is
    scored the students' checkpoints are removed (the full-data run's stays: scoring again under
    other settings reads it back). ``teachers``, ``records``: the run's teachers as loaded and
    recorded (:func:`_load_teachers`: not loaded again)."""
    from .evaluate import checkpoint_files, evaluate_under, same_architecture
    from .storage import load_distilled

    protocol = cfg.score_protocol()
    student_model = protocol.student_model(cfg.dataset)
    # (a teacher that records no test accuracy, e.g. pretrained weights, cannot stand for the full data)
    full_data = next((record["path"] for record in records
                      if same_architecture(record["model"], student_model) and record["test_accuracy"] is not None),
                     None)
    scores = results.setdefault("scores", {})
    reuse: Dict[str, Any] = {}  # (the students two sets share: the random subsets', the same images')
    checkpoints = str(Path(cfg.out) / SCORES_DIR)
    for key, directory in sets:
        own = _set_protocol(protocol, key)
        changed = _protocol_changes(scores[str(key)], own, cfg.dataset) if str(key) in scores else None
        if changed == []:
            continue  # (already scored under these settings)
        labels = ", labels per batch" if own.soft_labels != protocol.soft_labels else ""
        again = "" if not changed else "; again: " + ("under another protocol" if "name" in changed
                                                      else f"{', '.join(changed)} changed")
        _say(progress, f"DD-Ranking scores ({cfg.scores_protocol} protocol{labels}): {key.label} ipc {key.ipc} "
                       f"({own.student_count()} students{again})")
        scores[str(key)] = evaluate_under(own, load_distilled(directory), teachers,
                                          data_root=cfg.data_root, full_data_checkpoint=full_data,
                                          device=cfg.device, progress=progress, reuse=reuse, checkpoints=checkpoints,
                                          decode_cache=str(Path(cfg.out) / CACHE_DIR) if cfg.decode_cache else None)
        save()
    for path in checkpoint_files(checkpoints, full_data=False):  # (every report saved: no student is needed again)
        os.remove(path)


def _set_protocol(protocol, key: SetKey):
    """The protocol the set ``key`` is scored under: ``protocol``, but with labels per batch for
    a set labelled per batch (it has no static labels)."""
    return dataclasses.replace(protocol, soft_labels="per-batch") if key.labelled_per_batch else protocol


def _standing_scores(cfg: PipelineConfig, results: Dict[str, Any]) -> Dict[str, Any]:
    """{set: score report} of the reports made under the run's scores protocol, as each set is
    scored under it (:func:`_set_protocol`); none where the run has no scores."""
    protocol = cfg.score_protocol()
    if protocol is None:
        return {}
    return {text: report for text, report in (results.get("scores") or {}).items()
            if not _protocol_changes(report, _set_protocol(protocol, SetKey.parse(text)), cfg.dataset)}


def _protocol_changes(report: Dict[str, Any], protocol, dataset: Any) -> List[str]:
    """The settings of ``protocol`` (as its reports record them: protocol.settings) that differ
    from those the score report ``report`` was made under; empty: the report stands. A
    setting a report predates counts as its default; the students' result-neutral fields
    (STUDENT_RESULT_NEUTRAL: the device, the evaluation batches...) are not compared."""
    from .evaluate import PROTOCOL_NAME, protocol_settings
    from .run_identity import differing
    from .student import STUDENT_RESULT_NEUTRAL

    def comparable(settings: Dict[str, Any]) -> Dict[str, Any]:
        settings = json.loads(json.dumps(settings))  # (as results.json holds them: lists, not tuples)
        if isinstance(settings.get("student"), dict):
            settings["student"] = {k: v for k, v in settings["student"].items() if k not in STUDENT_RESULT_NEUTRAL}
        return settings

    full = report.get("full_data_hard")
    # (as a report made now records them: no full_data_epochs where the full-data accuracy was read, not trained)
    current = comparable(protocol_settings(protocol, full if isinstance(full, dict) else {}, dataset))
    recorded = comparable({k: v for k, v in report.get("protocol", {}).items() if k in current})
    # (a report of before protocols were named is infer-fast's)
    defaults = comparable({**dataclasses.asdict(type(protocol)()), "name": PROTOCOL_NAME})
    return differing(recorded, current, defaults=defaults)

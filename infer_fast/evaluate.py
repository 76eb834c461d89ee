"""Evaluate any distilled set under one declared protocol, with DD-Ranking's scores.

    report = evaluate_set(load_distilled("sets/infer10"), teachers, Protocol(seeds=3))

For every seed, students are trained (infer_fast.student.train_student) on

- the set: with its soft labels and with its hard labels, each with the protocol's
  augmentation and mixing and without any ("plain");
- a random real subset of the same budget (the set's ipc images per class, picked from the
  seed's own stream: :func:`random_subset`), soft-labelled by the teachers given, which must
  be those that labelled the set where it records them (:func:`labelling_teachers`), under
  the same four runs;

and the full training data's hard-label accuracy is trained once with the teacher recipe
(infer_fast.teacher.train_teacher, the protocol's student model) or read from a teacher
checkpoint that records it. From these accuracies: HLR (from the hard-label run without
augmentation, as DD-Ranking by default), IOR, LRS and ARS per seed
(infer_fast/scores.py), reported as mean and standard deviation (population, as DD-Ranking)
over the seeds. The report holds the protocol and every accuracy behind a score.

``soft_labels="per-batch"`` trains every soft-label student on the teachers' labels of each
augmented, mixed batch (DD-Ranking's "M" mode, our INFER+Dyn student) instead of the set's
stored labels; the set then needs no soft labels and the random subsets no relabelling.
``random_subset_seed`` fixes one random subset for every seed. DD-Ranking's own protocol
(learning-rate grid, best of periodic tests, its schedule, 5 rounds) is
``infer_fast.dd_ranking``.

``reuse``: a dict the caller keeps across the evaluations of one run (several sets, the same
teachers and data): a student it already trained there (the random subsets' students depend
on the ipc, seed, teachers and protocol alone; two sets of the same images share their
hard-label students) and the full-data run are taken from it, not trained again.

``checkpoints``: a folder (made if needed, held by an output lock while the evaluation trains)
where the full-data run and every student are checkpointed after every epoch, each in a file
of its own (FULL_DATA_CHECKPOINT, STUDENT_CHECKPOINT: named by what it is and a digest of what
it depends on); an evaluation given the folder again continues each from its file (a finished
one is read back, not trained again: a stopped evaluation loses at most an epoch of each). An
evaluation under other settings trains students of other names beside them; a file of the
same name but another run (its data or settings changed) is refused by the checkpoint's own
identity check, naming what differs."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import hashlib
import json
import os
import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from torch import Tensor, nn

from ._text import count_text
from .choices import SOFT_LABEL_MODES
from .options import CheckedWhenMade, check_fields, given_config, hold_as_made, option, options_of
from .progress import say
from .scores import DEFAULT_WEIGHT, FULL_DATA_EPOCHS, check_weight_option, dd_ranking_scores
from .student import RECIPES as STUDENT_RECIPES
from .student import augmentation_text, labels_text

REPORT_FORMAT = "infer-fast-evaluation"
PROTOCOL_NAME = "infer-fast"  # the report's protocol name (the other: dd_ranking.PROTOCOL_NAME)
# the runs per seed: (name, labels, with the protocol's augmentation and mixing?)
RUNS = (("soft", "soft", True), ("soft_plain", "soft", False), ("hard", "hard", True), ("hard_plain", "hard", False))
SCORE_NAMES = ("hlr", "ior", "lrs", "ars")
# the StudentConfig fields that say how the students compute, not what they learn: a full-data run
# trained here computes the same way (those of them a TeacherConfig has)
COMPUTE_FIELDS = ("precision", "channels_last", "augment_on")
# the files of an evaluation's checkpoints folder (module docstring): the full-data run's and each
# student's (trained on the set or on a random subset: STUDENT_SOURCES), named by what they are and
# a digest of everything else they depend on (identity_digest)
FULL_DATA_CHECKPOINT = "full-data-{model}-{dataset}-{digest}.pt"
STUDENT_CHECKPOINT = "{source}-{labels}-seed{seed}-{digest}.pt"
STUDENT_SOURCES = ("set", "random")


@dataclass(frozen=True)
class Protocol(CheckedWhenMade):
    """What every student of an evaluation shares. ``student``: StudentConfig fields (model,
    epochs, augmentation, mix, temperature...; the recipe named by ``recipe`` underneath);
    ``seeds``: students per run (seeds 0..n-1, also the random subsets' draws); ``weight``:
    w of LRS and ARS; ``full_data_epochs``: epochs of the full-data run when it is trained."""

    recipe: str = field(default="cifar", metadata=option("the students' recipe", choices=tuple(STUDENT_RECIPES)))
    student: Dict[str, Any] = field(default_factory=dict, metadata=option("StudentConfig fields over the recipe"))
    seeds: int = field(default=3, metadata=option("students per run (seeds 0..n-1)", minimum=1))
    weight: float = field(default=DEFAULT_WEIGHT, metadata=option(
        "w of LRS and ARS, in [0, 1]", check=check_weight_option))  # (the range on the flag too: argparse says it)
    full_data_epochs: int = field(default=FULL_DATA_EPOCHS, metadata=option("epochs of the full-data run", minimum=1))
    soft_labels: str = field(default="static", metadata=option(
        "the set's stored soft labels, or the teachers' on every batch", choices=SOFT_LABEL_MODES))
    random_subset_seed: Optional[int] = field(default=None, metadata=option(
        "one random subset for every seed", minimum=0, none="drawn with each seed"))

    def validate(self) -> None:
        check_fields(self)  # each field's type, range and choices, as declared above
        hold_as_made(self)  # (its own copy of the student fields: the caller's dict may change)
        for name in ("labels", "seed", "dynamic"):
            if name in self.student:
                raise ValueError(f"student: {name} is set by the evaluation itself, not by the protocol")
        self.student_config("soft", True, 0)  # (the student's fields, checked by its recipe)

    def settings(self, dataset: Any = None) -> Dict[str, Any]:
        """The protocol as its report records it (``protocol``, beside what follows from it):
        its name and fields (``dataset``: unused, the recipe is resolved when made)."""
        return {"name": PROTOCOL_NAME, **dataclasses.asdict(self)}

    def student_count(self) -> int:
        """Students an evaluation trains: the set and a random subset, RUNS each, per seed."""
        return 2 * len(RUNS) * self.seeds

    def student_model(self, dataset: Any = None) -> str:
        return self.student_config("soft", True, 0).model

    def student_config(self, labels: str, augmented: bool, seed: int, set_settings: Optional[Dict[str, Any]] = None):
        """The StudentConfig of one run: the recipe, what the set's method gives its students
        (``set_settings``: methods.registry.set_student_settings, RDED's augmentation) over it,
        the protocol's ``student`` fields over both."""
        from .student import StudentConfig

        values = dict(set_settings or {}, **self.student, labels=labels, seed=seed,
                      dynamic=labels == "soft" and self.soft_labels == "per-batch")
        if not augmented:
            values.update(augmentation="none", mix="none")
        return StudentConfig.from_recipe(self.recipe, **values)


def make_protocol(name: str, student: Dict[str, Any], seeds: Optional[int] = None,
                  dataset: Any = None, **options: Any):
    """The validated protocol ``name`` (one of EVALUATION_PROTOCOLS): ``student`` fields,
    ``seeds`` students per run (ours) or rounds (DD-Ranking's; None: the protocol's default),
    its other ``options``; with ``dataset`` (a name, or a mapping with its image size), DD-Ranking's is checked against its family
    (its recipe follows the dataset) and ours takes its family's student recipe unless
    ``recipe`` is given."""
    from .checks import check_choice
    from .choices import EVALUATION_PROTOCOLS
    from .dd_ranking import PROTOCOL_NAME as DD_RANKING, DDRankingProtocol

    check_choice("protocol", name, EVALUATION_PROTOCOLS)
    if name == DD_RANKING:
        protocol = DDRankingProtocol(student=student, **({} if seeds is None else {"rounds": seeds}), **options)
        if dataset:
            protocol.check_dataset(dataset)
    else:
        if dataset is not None and options.get("recipe") is None:
            from .student import recipe_of

            options["recipe"] = recipe_of(dataset)
        protocol = Protocol(student=student, **({} if seeds is None else {"seeds": seeds}), **options)
    return protocol


def evaluate_under(protocol, distilled, teachers: Sequence[nn.Module], **kwargs: Any) -> Dict[str, Any]:
    """The report of ``distilled`` under ``protocol`` (ours or DD-Ranking's): evaluate_set or
    dd_ranking.evaluate_set_dd_ranking, with their keyword arguments."""
    from .dd_ranking import DDRankingProtocol, evaluate_set_dd_ranking

    evaluate = evaluate_set_dd_ranking if isinstance(protocol, DDRankingProtocol) else evaluate_set
    return evaluate(distilled, teachers, protocol, **kwargs)


def same_architecture(a: str, b: str) -> bool:
    """Whether two model names build the same network (aliases resolved): names of one model
    that imply other settings (``convnet-w32-d3`` and ``convnet-w32-d3-batchnorm``, a default
    spelt out) are compared by the layers they build (:func:`_layout`)."""
    from .models.registry import normalize_name, resolve

    try:
        (spec_a, implied_a), (spec_b, implied_b) = resolve(a), resolve(b)
    except ValueError:  # torchvision:NAME, timm:NAME
        return normalize_name(a) == normalize_name(b)
    if spec_a.name != spec_b.name:
        return False
    return implied_a == implied_b or _layout(a, spec_a.input_sizes[0]) == _layout(b, spec_b.input_sizes[0])


def _layout(model_name: str, image_size: int) -> List[Tuple[str, str, Tuple[int, ...]]]:
    """The layers model ``model_name`` builds (for 10 classes of 3-channel images): each
    module's name and class, each parameter's and buffer's name and shape; built on the meta
    device (models.build_to_check)."""
    from .models import build_to_check, create_model

    model = build_to_check(lambda: create_model(model_name, num_classes=10, in_channels=3, image_size=image_size))
    return ([(name, type(m).__name__, ()) for name, m in model.named_modules()]
            + [(name, "tensor", tuple(t.shape)) for name, t in (*model.named_parameters(), *model.named_buffers())])


def check_full_data_checkpoint(path, model: str, dataset: str, class_names: Optional[Sequence[str]] = None,
                               label: str = "full_data_checkpoint", model_flag: Optional[str] = None) -> Dict[str, Any]:
    """The metadata of a full-data checkpoint whose recorded test accuracy is the students'
    full-data accuracy: it must be of the students' architecture and record one, and, given
    the set's ``class_names``, have been trained on those classes (a checkpoint of other
    classes measured other data). ``label``, ``model_flag``: how the errors name the
    checkpoint and the students' model (the CLI: "--full-data-checkpoint", "--model"; else the
    argument's name, the students' model unnamed)."""
    from .teacher import load_teacher

    named = f"{label} {str(path)!r}" if model_flag is None else f"{label} {path}"  # (a flag's value as typed)
    _, meta = load_teacher(str(path), dataset=dataset, class_names=class_names, names_from="the distilled set")
    if not same_architecture(meta["model"], model):
        fix = ("the full-data accuracy must come from the students' architecture" if model_flag is None else
               f"give {model_flag} {meta['model']}, or leave {label} out")
        raise ValueError(f"{named} is a {meta['model']}, the students are {model}"
                         f"{f' ({model_flag})' if model_flag else ''}: {fix}")
    if meta.get("test_accuracy") is None:
        raise ValueError(f"{named} records no test accuracy")
    return meta


def identity_text(identity: Any) -> str:
    """``identity`` (JSON-able: everything a result depends on) as one text, the same for equal ones."""
    return json.dumps(identity, sort_keys=True, default=str)


def identity_digest(identity: Any) -> str:
    """A short digest of :func:`identity_text`: what names a checkpoint in an evaluation's folder."""
    return hashlib.sha256(identity_text(identity).encode()).hexdigest()[:16]


def _file_part(name: Any) -> str:
    """``name`` (a model, a dataset) as part of a file name: what is not a letter, digit, '.', '_'
    or '-' ("torchvision:resnet18") made '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(name))


def full_data_checkpoint_path(folder, config) -> str:
    """The full-data run of the TeacherConfig ``config`` in the checkpoints folder ``folder``:
    named by its model and dataset and a digest of its settings, but the result-neutral ones
    (the data's place, the device: a job requeued on another node continues it; the teacher
    checkpoint compares the training data itself)."""
    from .data.registry import dataset_options
    from .options import result_settings

    name = FULL_DATA_CHECKPOINT.format(model=_file_part(config.model),
                                       dataset=_file_part(dataset_options(config.dataset)[0]),
                                       digest=identity_digest(result_settings(config)))
    return os.path.join(os.fspath(folder), name)


def checkpoint_files(folder, full_data: bool = True) -> List[str]:
    """The checkpoints an evaluation wrote in ``folder`` (sorted): its students', and the
    full-data runs' unless ``full_data`` is False."""
    sources = (*STUDENT_SOURCES, "full-data") if full_data else STUDENT_SOURCES
    where = glob.escape(os.fspath(folder))
    return sorted(path for source in sources for path in glob.glob(os.path.join(where, f"{source}-*.pt")))


@contextlib.contextmanager
def checkpoints_held(checkpoints, call: str) -> Iterator[None]:
    """The output lock of the checkpoints folder ``checkpoints`` (made if needed) while an
    evaluation trains into it (two evaluations continuing the same students would overwrite
    each other's epochs); nothing without a folder. A stop (interrupts.Interrupted) leaving it
    says how the evaluation (the function ``call``) continues, over what its full-data run or
    a student said of its own checkpoint (a temporary file without a folder: nothing kept)."""
    from . import interrupts
    from .output_lock import output_lock

    how = "" if checkpoints is None else \
        f"progress is saved in {checkpoints}: call {call} again with the same checkpoints to continue"
    with interrupts.continued_by(how), (contextlib.nullcontext() if checkpoints is None else
                                        output_lock(checkpoints, "evaluation checkpoints folder", inside=True)):
        yield


def train_full_data(model: str, dataset: str, data_root, device: str, epochs: int, progress: bool,
                    seed: int = 0, student: Optional[Dict[str, Any]] = None,
                    reuse: Optional[Dict[str, Any]] = None, checkpoints: Optional[str] = None) -> float:
    """Test accuracy of ``model`` trained with the teacher recipe on the whole training split,
    computing as the students do (the COMPUTE_FIELDS of the protocol's ``student`` fields);
    the run of the same settings in ``reuse`` (see the module docstring) when there is one.
    ``checkpoints``: the folder where it is trained (:func:`full_data_checkpoint_path`), resumed
    from its checkpoint there, or read back when finished (else a temporary file)."""
    import tempfile

    from .data.registry import dataset_label
    from .teacher import TeacherConfig, train_teacher

    compute = {k: v for k, v in (student or {}).items() if k in COMPUTE_FIELDS and k in options_of(TeacherConfig)}

    def train() -> float:
        if progress:  # (the teacher recipe's epoch lines follow: say what they train)
            say(f"full-data run (hard labels, for HLR): {model} on the whole {dataset_label(dataset)} training split, "
                f"{count_text(epochs, 'epoch')} of the teacher recipe")
        config = TeacherConfig(dataset=dataset, model=model, epochs=epochs, data_root=data_root, device=device,
                               seed=seed, **compute)
        if checkpoints is not None:  # (train_teacher resumes an unfinished one, reads a finished one back)
            return float(train_teacher(config, full_data_checkpoint_path(checkpoints, config),
                                       progress=progress)["test_accuracy"])
        with tempfile.TemporaryDirectory(prefix="infer-fast-full-data-") as tmp:
            summary = train_teacher(config, f"{tmp}/full.pt", progress=progress)
        return float(summary["test_accuracy"])
    return reused(reuse, {"full data": [model, dataset, data_root, device, epochs, seed, compute]}, train)


def _full_data_accuracy(protocol: Protocol, distilled, data_root, device: str, full_data_checkpoint,
                        progress: bool, reuse: Optional[Dict[str, Any]],
                        checkpoints: Optional[str]) -> Dict[str, Any]:
    """{"accuracy", "source", "epochs"}: read from a teacher checkpoint of the students'
    architecture (trained on the classes of the set ``distilled``; with its ``checkpoint`` and the
    epochs it records: :func:`checkpoint_full_data`), or trained with the teacher recipe on the
    whole training split of the set's dataset (the protocol's full_data_epochs)."""
    model, dataset = protocol.student_model(), distilled.real_dataset
    if full_data_checkpoint is not None:
        meta = check_full_data_checkpoint(full_data_checkpoint, model, dataset, distilled.class_names)
        return {"accuracy": float(meta["test_accuracy"]), **checkpoint_full_data(full_data_checkpoint, meta)}
    accuracy = train_full_data(model, dataset, data_root, device, protocol.full_data_epochs, progress,
                               student=protocol.student, reuse=reuse, checkpoints=checkpoints)
    return {"accuracy": accuracy,
            "source": f"trained here: {model}, {count_text(protocol.full_data_epochs, 'epoch')} of the teacher recipe",
            "epochs": protocol.full_data_epochs, "trained_here": True}


def checkpoint_full_data(path, meta: Dict[str, Any]) -> Dict[str, Any]:
    """What a report records of a full-data accuracy read from the teacher checkpoint ``path``
    (``meta``: its metadata, check_full_data_checkpoint's): ``source``, the ``checkpoint`` and the
    ``epochs`` it was trained for (None: pretrained weights, or a checkpoint that records none).
    No epochs of the protocol: its full_data_epochs trained nothing here."""
    from .teacher import is_pretrained

    epochs, pretrained = meta.get("epochs_done"), is_pretrained(meta)
    if pretrained or isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        epochs = None  # (a pretrained teacher's 0 epochs are not a training of that length)
    how = count_text(epochs, "epoch") if epochs is not None else \
        ("pretrained weights" if pretrained else "epochs not recorded")
    return {"source": f"recorded in {path} ({meta['model']}, {how})", "checkpoint": str(path), "epochs": epochs,
            "trained_here": False}


# The random subsets are drawn from a stream of their own (training_rng.derived_seed of the
# seed), not from random_set's seed itself: `distill --method random --seed S` draws with S,
# and an evaluation seed equal to S would compare that set with itself (IOR exactly 0, its
# students trained twice). DD-Ranking's random subsets are files of their own, independent of
# the set scored; a stream of their own keeps ours independent of every Random set too.
# (Changing it changed the random subsets, so the scores, of evaluations made before.)
RANDOM_SUBSET_STREAM = "evaluation-random-subset"


def random_subset(train, ipc: int, seed: int, teachers: Sequence[nn.Module], device: str, static_labels: bool):
    """The random real subset of a set's budget, picked with ``seed``'s own stream
    (RANDOM_SUBSET_STREAM); soft-labelled by the teachers when the students train on static
    labels."""
    from .methods.random import random_set
    from .relabel import relabel
    from .training_rng import derived_seed

    subset = random_set(train, ipc, derived_seed(RANDOM_SUBSET_STREAM, seed))
    return relabel(subset, list(teachers), device=device) if static_labels else subset


def reused(reuse: Optional[Dict[str, Any]], identity: Any, make: Callable[[], Any]) -> Any:
    """``make()``, or what it gave before for the same ``identity`` (JSON-able: everything the
    result depends on) in the memo ``reuse`` (None: nothing kept, always made)."""
    if reuse is None:
        return make()
    key = identity_text(identity)
    if key not in reuse:
        reuse[key] = make()
    return reuse[key]


class Students:
    """train_student's results for one evaluation (``final_accuracy`` and ``history``: what the
    protocols read), each kept in the memo ``reuse`` under what it depends on: the data trained
    on (:meth:`of_set`, :meth:`of_random_subset`), its StudentConfig, the teachers' weights (they
    label the random subsets and the per-batch runs) and the real data behind the test split
    (``dataset`` and ``data_root``); each checkpointed in the folder ``checkpoints`` (module
    docstring) when one is given."""

    def __init__(self, reuse: Optional[Dict[str, Any]], test, teachers: Sequence[nn.Module],
                 teacher_digests: Sequence[str], dataset: Any, data_root: Optional[str],
                 checkpoints: Optional[str] = None):
        self.reuse, self.test, self.teachers, self.checkpoints = reuse, test, list(teachers), checkpoints
        self.dataset = dataset
        self.shared = {"teachers_sha256": list(teacher_digests), "data": [dataset, data_root]}
        self._set_digests: Dict[bool, str] = {}

    def train(self, source: Callable[[], Any], identity: Dict[str, Any], config, progress: bool) -> Dict[str, Any]:
        """The result of a student of ``config`` on ``source()`` (made only when trained)."""
        from .student import train_student

        def run() -> Dict[str, Any]:
            data = source()
            checkpoint = None if self.checkpoints is None else self.checkpoint(data, identity, config)
            # a whole student in this process, never DDP: under torchrun `run` scores on rank 0
            # alone (a DDP student there waited forever for the other ranks)
            result = train_student(data, self.test, config, teachers=self.teachers, progress=progress,
                                   checkpoint=checkpoint, resume=True, ddp=False)
            return {"final_accuracy": result["final_accuracy"], "history": result["history"]}
        return reused(self.reuse, {**self.shared, **identity, "config": dataclasses.asdict(config)}, run)

    def checkpoint(self, data, identity: Dict[str, Any], config) -> str:
        """The file of the student of ``config`` on ``data`` (``identity``: as :meth:`train`'s) in
        the checkpoints folder: STUDENT_CHECKPOINT, its digest of the memo's identity with the
        set's method (the student checkpoint's identity holds it: INFER's and INFER+Dyn's sets of
        the same images have hard-label students of their own there), less where the data lies
        and the students' result-neutral fields (a job requeued on another node, with the data
        elsewhere or another device, continues them)."""
        from .options import result_settings

        digest = identity_digest({**self.shared, "data": self.dataset, **identity, "config": result_settings(config),
                                  "method": data.method})
        name = STUDENT_CHECKPOINT.format(source="random" if "random_subset" in identity else "set",
                                         labels=config.labels, seed=config.seed, digest=digest)
        return os.path.join(os.fspath(self.checkpoints), name)

    def of_set(self, distilled, config) -> Dict[str, Any]:
        """The identity of ``distilled`` as a student of ``config`` reads it: its tensors, less
        the stored soft labels when it does not train on them (hard labels, per-batch labels:
        INFER's and INFER+Dyn's sets of the same images share those students)."""
        static_soft = config.labels == "soft" and not config.dynamic
        # (neither a memo nor checkpoints: no digest needed)
        if (self.reuse is not None or self.checkpoints is not None) and static_soft not in self._set_digests:
            self._set_digests[static_soft] = set_content_digest(distilled, static_soft)
        return {"set_sha256": self._set_digests.get(static_soft)}

    @staticmethod
    def of_random_subset(ipc: int, seed: int) -> Dict[str, Any]:
        """The identity of a random subset (:func:`random_subset`): what it is drawn from (its
        static soft labels, read only by a config that says so, are the teachers')."""
        return {"random_subset": {"ipc": ipc, "seed": seed, "stream": RANDOM_SUBSET_STREAM}}


def set_content_digest(distilled, with_soft_labels: bool) -> str:
    """content_digest of the set's tensors (student.set_digest's), the stored soft labels left
    out unless ``with_soft_labels``."""
    from ._io import content_digest
    from .storage.distilled_set import SOFT_LABEL_NAMES

    return content_digest(t for f in dataclasses.fields(distilled)
                          if (with_soft_labels or f.name not in SOFT_LABEL_NAMES)
                          and isinstance(t := getattr(distilled, f.name), Tensor))


def _summary(values: Sequence[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values)}


# why a set's labelling teachers are not checked (report["set"]["labelling_teachers"]["note"])
NO_LABELLING_RECORD = ("the set records no digests of the teachers behind its soft labels (relabelled before "
                       "infer-fast recorded them, or imported with labels of its own): that they are the teachers "
                       "given here could not be checked")


# what a refusal of other labelling teachers advises (labelling_teachers: a caller may say it its own way)
OTHER_LABELLING_TEACHERS_TODO = "evaluate with those teachers or relabel the set with these"


def labelling_teachers(distilled, teacher_digests: Sequence[str], static_labels: bool,
                       todo: str = OTHER_LABELLING_TEACHERS_TODO) -> Dict[str, Any]:
    """What the report says of the teachers behind the set's soft labels
    (``report["set"]["labelling_teachers"]``: ``checked`` True, False with a ``note`` saying why,
    None where not needed: per-batch labels, by the teachers given, whose digests it records). With
    static labels the random subsets are
    labelled by the teachers given (``teacher_digests``: _io.model_digest of each), so IOR
    compares like with like only if those labelled the set too: a ValueError, before any
    work, when the set's relabel record (relabel.relabel_record) names others (``todo``: what
    the message advises). A set that records none (relabelled before the record, imported) is
    evaluated, and the report says its teachers were not checked."""
    if not static_labels:  # (the teachers that labelled the students, by their weights)
        return {"teachers_sha256": list(teacher_digests), "checked": None,
                "note": "not needed: the teachers given here label every soft-label batch"}
    record = (distilled.hyperparameters or {}).get("relabel")
    record = record if isinstance(record, dict) else {}
    recorded = record.get("teachers_sha256")
    paths = record.get("teachers")
    if not isinstance(recorded, list) or not recorded:
        return {"teachers": paths, "checked": False, "note": NO_LABELLING_RECORD}
    if sorted(recorded) != sorted(teacher_digests):
        named = (", ".join(map(str, paths)) if isinstance(paths, list) and len(paths) == len(recorded)
                 else ", ".join(f"weights sha256 {d[:12]}..." for d in recorded))
        raise ValueError(f"the set's soft labels are from other teachers than those given here: it was relabelled "
                         f"with {count_text(len(recorded), 'teacher')} ({named}); {todo}")
    return {"teachers": paths, "teachers_sha256": list(recorded), "checked": True}


def check_evaluable(distilled, teachers: Sequence[nn.Module], device: str, static_labels: bool) -> int:
    """The set's ipc, once everything an evaluation needs is there (before any training)."""
    from .teacher import resolve_device

    resolve_device(device)
    if static_labels and not distilled.has_soft_labels:
        from .methods.registry import find_method

        method = find_method(distilled.method)  # (an imported set's may be none)
        how = f" ({method.label}'s students take them)" if method and method.student_labels == "per-batch" else ""
        raise ValueError("the set has no soft labels: relabel it first (infer-fast relabel), with the teachers given "
                         f"here, or evaluate with per-batch teacher labels (--soft-labels per-batch){how}")
    if not teachers:
        raise ValueError("teachers: the random subsets need the teachers that labelled the set")
    ipc = distilled.budget.get("ipc")
    if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
        raise ValueError("the set records no budget ipc (images per class): cannot pick a random subset of its budget")
    return ipc


def evaluate_set(
    distilled, teachers: Sequence[nn.Module], protocol: Optional[Protocol] = None, *,
    data_root: Optional[str] = None, full_data_checkpoint: Optional[str] = None, device: str = "auto",
    progress: bool = True, decode_cache: Optional[str] = None, reuse: Optional[Dict[str, Any]] = None,
    checkpoints: Optional[str] = None,
) -> Dict[str, Any]:
    """The evaluation report of ``distilled`` (a DistilledSet with soft labels, relabelled by
    ``teachers``, which also label the random subsets; one model is a list of one, no two
    holding the same weights). See the module docstring.
    ``decode_cache``: a directory where a test split read from image files is decoded once
    for all the students (``data.load_test_split``); ``reuse``: the memo of students a caller
    keeps across the sets of one run; ``checkpoints``: the folder where the full-data run and
    the students are checkpointed and continued (module docstring)."""
    from ._io import model_digest
    from .data import load_dataset, load_test_split
    from .methods.registry import set_student_settings
    from .student import check_test_set
    from .teacher import check_distinct_teachers, teacher_list

    protocol = given_config("protocol", protocol, Protocol, Protocol)
    teachers = teacher_list(teachers)  # (one model, or a generator read once: every seed's students take them)
    own = set_student_settings(distilled)  # (RDED: its augmentation, for the set's and the random subset's students)
    static = protocol.soft_labels == "static"
    ipc = check_evaluable(distilled, teachers, device, static)
    digests = [model_digest(t) for t in teachers]
    check_distinct_teachers(digests)
    labelled_by = labelling_teachers(distilled, digests, static)
    train = load_dataset(distilled.real_dataset, "train", data_root=data_root, progress=progress)
    test = load_test_split(distilled.real_dataset, data_root=data_root, decode_cache=decode_cache, progress=progress)
    check_test_set(distilled, test)  # (before the full-data run trains: the data must be the set's classes)
    with checkpoints_held(checkpoints, "evaluate_set"):
        full = _full_data_accuracy(protocol, distilled, data_root, device, full_data_checkpoint, progress, reuse,
                                   checkpoints)
        students = Students(reuse, test, teachers, digests, distilled.real_dataset, data_root, checkpoints)
        accuracies: Dict[str, Dict[str, List[float]]] = {"set": {}, "random": {}}
        per_seed: List[Dict[str, float]] = []
        for seed in range(protocol.seeds):
            subset_seed = seed if protocol.random_subset_seed is None else protocol.random_subset_seed
            # (drawn and labelled once, when a student of it is first trained)
            random = functools.cache(functools.partial(random_subset, train, ipc, subset_seed, teachers, device, static))
            seed_acc: Dict[str, float] = {}
            for which, what in (("set", "the set"), ("random", "the random subset")):
                for name, labels, augmented in RUNS:
                    config = dataclasses.replace(protocol.student_config(labels, augmented, seed, own), device=device)
                    if progress:
                        say(f"seed {seed + 1}/{protocol.seeds}, {what}: {labels_text(config)}, "
                            f"{augmentation_text(config)}")
                    if which == "set":
                        result = students.train(lambda: distilled, students.of_set(distilled, config), config, progress)
                    else:
                        result = students.train(random, students.of_random_subset(ipc, subset_seed), config, progress)
                    acc = result["final_accuracy"]
                    accuracies[which].setdefault(name, []).append(acc)
                    seed_acc[f"{which}_{name}"] = acc
            scores = dd_ranking_scores({
                # HLR from the hard-label run without augmentation (DD-Ranking's default, use_aug_for_hard=False)
                "full_hard": full["accuracy"], "set_hard": seed_acc["set_hard_plain"], "set_soft": seed_acc["set_soft"],
                "random_soft": seed_acc["random_soft"], "set_soft_plain": seed_acc["set_soft_plain"],
                "random_soft_plain": seed_acc["random_soft_plain"],
            }, protocol.weight)
            per_seed.append({**seed_acc, **{k: scores[k] for k in SCORE_NAMES}, "random_subset_seed": subset_seed})
    return {
        "format": REPORT_FORMAT,
        "set": {"method": distilled.method, "dataset": distilled.dataset, "budget": dict(distilled.budget),
                "training_images": distilled.num_training_images(), "labelling_teachers": labelled_by},
        "protocol": {**protocol_settings(protocol, full),
                     # (as the students train: on ``device``)
                     "student_config": dataclasses.asdict(dataclasses.replace(
                         protocol.student_config("soft", True, 0, own), device=device)),
                     "runs": {name: {"labels": labels, "augmentation_and_mixing": augmented}
                              for name, labels, augmented in RUNS},
                     "random_subset": random_subset_text(ipc, "the seed" if protocol.random_subset_seed is None
                                                         else f"seed {protocol.random_subset_seed} for every seed",
                                                         static, labelled_by)},
        "full_data_hard": full,
        "accuracy": {which: {name: _summary(v) for name, v in runs.items()} for which, runs in accuracies.items()},
        "scores": {name: _summary([s[name] for s in per_seed]) for name in SCORE_NAMES},
        "per_seed": per_seed,
    }


def protocol_settings(protocol, full: Dict[str, Any], dataset: Any = None) -> Dict[str, Any]:
    """The settings of ``protocol`` (either protocol's: its settings(dataset)) as a report
    records them (``full``: its ``full_data_hard``): without ``full_data_epochs`` where the
    full-data accuracy was read (a checkpoint, DD-Ranking's cached value), not trained here: no
    run of that length was (``full_data_hard`` says what the checkpoint records)."""
    settings = protocol.settings(dataset)
    if full.get("trained_here") is False:
        settings.pop("full_data_epochs", None)
    return settings


def random_subset_text(ipc: int, seed: str, static_labels: bool, labelled_by: Dict[str, Any]) -> str:
    """A report's ``protocol["random_subset"]``: how the random subsets were drawn (``seed``:
    with which) and labelled."""
    text = (f"ipc {ipc} real training images per class, picked with {seed} (in a stream of their own: never the "
            "images of a Random set of that seed)")
    if not static_labels:
        return text + ", labelled by the teachers on every batch"
    return text + (", soft-labelled by the teachers given, those that labelled the set" if labelled_by["checked"] else
                   ", soft-labelled by the teachers given (whether they labelled the set too could not be checked)")


def unchecked_teachers_line(report: Dict[str, Any]) -> List[str]:
    """The report table's note when the set's labelling teachers could not be checked."""
    labelled_by = report["set"].get("labelling_teachers", {})  # (a report of before the check has none)
    return [f"note: labelling teachers not checked: {labelled_by['note']}"] if labelled_by.get("checked") is False else []


def report_student(report: Dict[str, Any]) -> str:
    """The students' model of an evaluation report (a report of before may not record it)."""
    return report["protocol"].get("student_config", {}).get("model", "?")


def format_report(report: Dict[str, Any]) -> str:
    """The report as a short table (accuracies and scores in %, mean +- std over seeds)."""
    def pct(summary):
        return f"{100 * summary['mean']:6.2f} +- {100 * summary['std']:5.2f}"

    if report["protocol"].get("name") == "dd-ranking":
        from .dd_ranking import format_dd_ranking_report

        return format_dd_ranking_report(report)
    s = report["set"]
    labels = report["protocol"].get("soft_labels", "static")
    lines = [f"{s['method']} set on {s['dataset']} (budget {s['budget']}), {report_student(report)} students, "
             f"{report['protocol']['seeds']} seed(s); protocol {PROTOCOL_NAME} (final-epoch accuracy, {labels} soft "
             "labels)",
             f"{'run':<12} {'set':>16} {'random subset':>16}"]
    for name, *_ in RUNS:
        lines.append(f"{name:<12} {pct(report['accuracy']['set'][name]):>16} {pct(report['accuracy']['random'][name]):>16}")
    lines.append(f"full data, hard labels: {100 * report['full_data_hard']['accuracy']:.2f} "
                 f"({report['full_data_hard']['source']})")
    lines.append("scores: " + ", ".join(f"{name.upper()} {pct(report['scores'][name])}" for name in SCORE_NAMES))
    return "\n".join(lines + unchecked_teachers_line(report))

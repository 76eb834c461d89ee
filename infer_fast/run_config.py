"""The experiment an `infer-fast run` config describes (:class:`PipelineConfig`), checked
before any work, and the configs of its steps derived from it."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

from .choices import EVALUATION_PROTOCOLS
from .checks import check_int
from .methods import all_methods, get_method, run_method_names
from .methods.registry import PLUGINS_HINT, find_method, run_level_options
from .options import check_value
from .set_keys import SetKey, external_method, registered_method

__all__ = ["PipelineConfig", "load_pipeline_config", "build_config"]


METHOD_SECTION = {"method_section": True}  # the metadata of a PipelineConfig field holding a method's options


def _run_level_default(name: str):
    """The default of a run-level setting (INFER's accounting, selection), as the method taking it declares it:
    a PipelineConfig field's default_factory (called when a config is made, once the methods are registered)."""
    return field(default_factory=lambda: run_level_options()[name].default)


def _check_count(where: str, name: str, value: Any) -> None:
    """ValueError "<where>: <name> must be a positive integer, got ..." unless ``value`` is one
    (a bool, YAML's yes or true, is not: check_int)."""
    try:
        check_int(name, value)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class PipelineConfig:
    """One experiment. ``teachers``: a list of entries, each ``{"path": FILE}`` (a trained
    teacher checkpoint), ``{"model": NAME, "pretrained": true | WEIGHTS_FILE}`` (pretrained
    weights from the local cache, e.g. the ImageNet teachers) or TeacherConfig fields
    (``model``, ``epochs``, ``lr``...: trained into ``<out>/teachers/``). ``recovery``: RecoveryConfig fields for INFER;
    ``sre2l``: RecoveryConfig fields for SRe2L on top of ``RecoveryConfig.sre2l()`` (plus the
    ``recovery`` augmentation settings); ``student``: StudentConfig fields; ``scores``: also
    evaluate every set with DD-Ranking's scores (the sets of methods whose students are labelled
    per batch, INFER+Dyn's and RDED's, with the teachers' labels per batch)."""

    dataset: str
    teachers: List[Dict[str, Any]]
    out: str
    ipc: List[int] = field(default_factory=lambda: [10])
    methods: List[str] = field(default_factory=lambda: ["infer", "random", "sre2l"])
    data_root: Optional[str] = None
    device: str = "auto"
    # (the sections a method's options may have: Method.config_section; METHOD_SECTION marks them)
    recovery: Dict[str, Any] = field(default_factory=dict, metadata=METHOD_SECTION)
    sre2l: Dict[str, Any] = field(default_factory=dict, metadata=METHOD_SECTION)
    # the options of the methods without a section above (e.g. cda, rded), by method name:
    # {rded: {factor: 2}}; each also takes the ``recovery`` settings it shares (Method.shared_recovery_options)
    method_options: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    accounting: str = _run_level_default("accounting")
    selection: str = _run_level_default("selection")
    student: Dict[str, Any] = field(default_factory=dict)
    dynamic_epochs: Optional[int] = None
    seeds: int = 3
    feature_duplication: bool = True
    # DD-Ranking's scores of every set: false (off), true or "infer-fast" (infer-fast evaluate's
    # protocol with ``student`` and ``seeds``; 8 more students per seed and set), "dd-ranking"
    # (DD-Ranking's protocol, ``student``'s model and epochs, ``seeds`` rounds), or a mapping
    # {protocol: NAME, OPTION: VALUE...} (e.g. lr_grid, test_interval, soft_labels)
    scores: Any = False
    # sets made elsewhere (e.g. `infer-fast import`ed, with soft labels) trained and scored
    # beside ours under the same protocol: {label: set directory}; each at its own ipc (with
    # ``methods: []`` they are the whole run: nothing is distilled)
    external: Dict[str, str] = field(default_factory=dict)
    # a test split read from image files (ImageNet's val) is decoded once into <out>/cache/ and
    # memory-mapped for every student evaluation (uint8 at the eval size: 7.5 GB for ImageNet's
    # 50,000 val images at 224^2) instead of being decoded again for each
    decode_cache: bool = True
    # what messages about the config name it (a YAML file's path); checked when made, as the
    # option configs are (options.CheckedWhenMade), so run_pipeline takes it as it is
    where: InitVar[str] = "config"
    # the methods its file lists beside ``methods`` (load_pipeline_config: a file narrowed with
    # --methods): a ``student`` option that their students use is not refused as unused
    written_for: InitVar[Tuple[str, ...]] = ()

    def __post_init__(self, where: str, written_for: Tuple[str, ...]) -> None:
        self._expand_home()
        self.validate(where, written_for)

    def _expand_home(self) -> None:
        """``~`` in its paths (``out``, ``data_root``, a teacher's checkpoint or weights file, the
        ``external`` sets) as a shell expands it on a command line (config.home_expanded): a
        YAML file's ``out: ~/runs/x`` is not a folder named ``~``. The teachers and external
        sets become copies (a caller's list and mapping stay as they are)."""
        from .config import home_expanded

        def expanded(value: Any) -> Any:
            return home_expanded(value) if isinstance(value, str) else value

        def teacher(entry: Any) -> Any:  # (pretrained: true, or a weights file)
            return {k: expanded(v) if k in ("path", "pretrained") else v for k, v in entry.items()} \
                if isinstance(entry, dict) else entry

        object.__setattr__(self, "out", expanded(self.out))
        object.__setattr__(self, "data_root", expanded(self.data_root))
        if isinstance(self.teachers, list):
            object.__setattr__(self, "teachers", [teacher(entry) for entry in self.teachers])
        if isinstance(self.external, dict):
            object.__setattr__(self, "external", {label: expanded(d) for label, d in self.external.items()})

    @property
    def scores_protocol(self) -> Optional[str]:
        """The protocol of the run's scores (None: no scores)."""
        if isinstance(self.scores, dict):
            return self.scores.get("protocol", "infer-fast")
        return "infer-fast" if self.scores is True else (self.scores or None)

    def score_protocol(self, where: str = "config"):
        """The evaluation protocol of the run's scores, validated (None: no scores): the run's
        student (DD-Ranking's: its model and epochs) and seeds (DD-Ranking's: rounds), and
        the options of a ``scores: {protocol: ..., OPTION: VALUE}`` mapping."""
        from .dd_ranking import DDRankingProtocol
        from .evaluate import COMPUTE_FIELDS, Protocol, make_protocol

        name = self.scores_protocol
        if name is None:
            return None
        if name not in EVALUATION_PROTOCOLS:
            raise ValueError(f"{where}: scores: protocol must be one of {', '.join(EVALUATION_PROTOCOLS)}, got {name!r}")
        options = {k: v for k, v in self.scores.items() if k != "protocol"} if isinstance(self.scores, dict) else {}
        student = {k: v for k, v in self.student.items() if k not in ("seed", "labels", "dynamic")}
        kind = DDRankingProtocol if name == "dd-ranking" else Protocol
        allowed = sorted({f.name for f in dataclasses.fields(kind)} - {"student", "seeds", "rounds"})
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(f"{where}: scores: unknown option(s) {', '.join(unknown)} of the {name} protocol; allowed: "
                             f"protocol, {', '.join(allowed)}")
        if name == "dd-ranking":  # (its student: the run's model, epochs and how it computes; the rest is its recipe)
            student = {k: v for k, v in student.items() if k in ("model", "epochs", *COMPUTE_FIELDS)}
        try:
            return make_protocol(name, student, self.seeds, self.dataset, **options)
        except ValueError as exc:
            raise ValueError(f"{where}: scores: {exc}") from None

    @classmethod
    def from_dict(cls, values: Dict[str, Any], where: str = "config",
                  written_for: Tuple[str, ...] = ()) -> "PipelineConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        values = _as_fields(values)
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
        missing = [n for n in ("dataset", "teachers", "out") if values.get(n) in (None, "", [])]
        if missing:
            raise ValueError(f"{where}: {', '.join(missing)} must be given")
        return cls(**values, where=where, written_for=tuple(written_for))

    # ---- derived configs (each validated by its own class) ------------------------------
    @property
    def seed(self) -> int:
        """The run's distillation seed (``recovery: {seed: N}``, default 0)."""
        return distillation_seed(self.recovery)

    def method_options_of(self, name: str) -> Dict[str, Any]:
        """The options the run gives method ``name`` (unchecked; its recipe for the run's
        dataset goes under them when they are parsed: Method.options_for_dataset), from its
        facts (Method): the ``recovery`` settings it shares, its section (``config_section``,
        else its ``method_options`` entry) on top, and the run-level settings it takes
        (``run_options``: INFER's selection and accounting)."""
        method = get_method(name)
        shared = shared_recovery_settings(method, self.recovery)
        own = getattr(self, method.config_section) if method.config_section else self.method_options.get(name, {})
        return {**shared, **own, **{k: getattr(self, k) for k in method.run_options}}

    def options_for(self, name: str) -> Dict[str, Any]:
        """Method ``name``'s options, checked and parsed (errors prefixed with where they come from)."""
        method = get_method(name)
        try:
            return method.options_for_dataset(self.method_options_of(name), self.dataset, self.seed)
        except ValueError as exc:
            raise ValueError(f"{method.config_section or f'method_options: {name}'}: {exc}") from None

    def student_config(self, method: str, seed: int, num_teachers: int, set_settings: Optional[Mapping[str, Any]] = None):
        """The StudentConfig of a student of ``method``'s set: the run's student fields over
        ``set_settings`` (what the set's method gives its students: set_student_settings) over
        the recipe of the dataset's family (ImageNet: the SRe2L protocol). A method whose
        students the teachers label per batch (INFER+Dyn, RDED) takes their labels whatever the
        section's ``labels``: a run of hard labels keeps them as references of labels per batch."""
        from .student import RECIPES, StudentConfig, recipe_of

        values = {**RECIPES[recipe_of(self.dataset)], **(set_settings or {}), "device": self.device, **self.student,
                  "seed": seed}
        own = registered_method(method)  # (None: a set given to the run, with static labels)
        if own is not None and own.student_labels == "per-batch":  # the teachers label every batch
            values["dynamic"] = True
            values.pop("labels", None)  # (soft: the teachers' logits)
        if own is not None and own.reduced_student_epochs:  # (INFER+Dyn, the paper's: 400 -> 80 for M = 4)
            epochs = values.get("epochs", StudentConfig.epochs)
            values["epochs"] = self.dynamic_epochs or max(1, round(epochs / (num_teachers + 1)))
        return build_config(StudentConfig, values, "student")

    def teacher_config(self, i: int):
        """The TeacherConfig of the run's i-th teacher, one trained by the run (its entry's
        training settings over the run's dataset, data root and device)."""
        from .teacher import TeacherConfig

        values = {"dataset": self.dataset, "data_root": self.data_root, "device": self.device, **self.teachers[i]}
        return build_config(TeacherConfig, values, f"teachers[{i}]")

    def validate(self, where: str = "config", written_for: Tuple[str, ...] = ()) -> None:
        """ValueError (prefixed with ``where``, naming the option) unless every setting is usable:
        checked in this order, before any work (``written_for``: the field of that name)."""
        written_for = self._checked_written_for(where, written_for)
        self._check_places(where)
        self._check_teachers(where)
        self._check_sets(where)
        self._check_external(where)
        self._check_switches(where)
        parsed = self._check_recipes(where, written_for)
        self._check_models(where, parsed)

    @staticmethod
    def _checked_written_for(where: str, written_for: Any) -> Tuple[str, ...]:
        """``written_for`` as a tuple of registered method names, or a ValueError naming it (a
        bare string would be read letter by letter)."""
        if isinstance(written_for, str) or not isinstance(written_for, (list, tuple)):
            raise ValueError(f"{where}: written_for must be a list of method names, got {written_for!r}")
        for name in written_for:
            try:
                get_method(name)
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{where}: written_for: {exc.args[0] if exc.args else exc}") from None
        return tuple(written_for)

    def _check_places(self, where: str) -> None:
        """The run directory, dataset, data root and device."""
        from .data import canonical_name
        from .teacher import resolve_device

        if not isinstance(self.out, str):
            raise ValueError(f"{where}: out must be a string, got {self.out!r}")
        if not isinstance(self.dataset, (str, dict)):
            raise ValueError(f"{where}: dataset must be a name or {{name, num_classes, image_size, in_memory}}, got {self.dataset!r}")
        if self.data_root is not None and not isinstance(self.data_root, str):
            raise ValueError(f"{where}: data_root must be a string, got {self.data_root!r}")
        try:
            canonical_name(self.dataset)
            resolve_device(self.device)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    def _check_teachers(self, where: str) -> None:
        if not isinstance(self.teachers, list) or not self.teachers:
            raise ValueError(f"{where}: teachers must be a non-empty list of {{path: FILE}} or teacher settings")
        for i, entry in enumerate(self.teachers):
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: teachers[{i}] must be a mapping ({{path: FILE}} or model/epochs/...), got {entry!r}")
            if "path" in entry and len(entry) > 1:
                raise ValueError(f"{where}: teachers[{i}] gives a path and training settings; give one or the other")
            if entry.get("pretrained") and (set(entry) - {"model", "pretrained"} or "model" not in entry):
                raise ValueError(f"{where}: teachers[{i}] with pretrained weights takes model and pretrained only, got {sorted(entry)}")
        self._check_teachers_distinct(where)

    def _check_teachers_distinct(self, where: str) -> None:
        """No teacher entry repeats an earlier one: the same checkpoint (however its path is
        spelt), the same pretrained weights, or the same training settings (the same seed
        trains the same weights). One teacher twice would weigh twice in the soft labels and
        count twice in M (INFER's UFC sets, INFER+Dyn's epochs). A copy of a checkpoint under
        another name is found once the teachers load (teacher.check_distinct_teachers)."""
        from .teacher import TEACHER_RESULT_NEUTRAL

        same_settings = "give the same training settings (they would train the same weights; another seed trains " \
                        "another teacher)"
        said = {"path": "name the same checkpoint", "pretrained": "name the same pretrained weights",
                "trained": same_settings, "entry": same_settings}

        def teacher_of(i: int, entry: Dict[str, Any]) -> Tuple[str, Any]:  # (its kind, what names the teacher)
            if "path" in entry:
                return "path", os.path.realpath(str(entry["path"]))
            if entry.get("pretrained"):
                weights = entry["pretrained"]  # (true: the model's own; or a weights file)
                weights = os.path.realpath(weights) if isinstance(weights, str) else weights
                return "pretrained", (entry.get("model"), weights)
            try:  # (as it trains: defaults filled in, result-neutral fields such as device left out)
                settings = dataclasses.asdict(self.teacher_config(i))
            except ValueError:  # (refused with its own message by the model checks)
                return "entry", sorted(entry.items(), key=lambda item: item[0])
            return "trained", sorted((k, repr(v)) for k, v in settings.items() if k not in TEACHER_RESULT_NEUTRAL)

        earlier: List[Tuple[str, Any]] = []
        for j, entry in enumerate(self.teachers):
            teacher = teacher_of(j, entry)
            if teacher in earlier:
                i = earlier.index(teacher)
                raise ValueError(f"{where}: teachers[{i}] and teachers[{j}] {said[teacher[0]]}: give each teacher once")
            earlier.append(teacher)

    def _check_sets(self, where: str) -> None:
        """The sets and students asked for: ipc, methods and their options' sections, budget
        accounting, selection and seeds."""
        if not isinstance(self.ipc, list) or not self.ipc:
            raise ValueError(f"{where}: ipc must be a positive integer or a list of them, got {self.ipc!r}")
        for value in self.ipc:
            _check_count(where, "ipc", value)
        # (find_method loads the plug-ins where a name is none of the methods registered yet)
        bad = [m for m in self.methods if not isinstance(m, str) or find_method(m) is None] \
            if isinstance(self.methods, list) else []
        known = run_method_names()
        if not isinstance(self.methods, list) or bad:
            plugin = f" ({PLUGINS_HINT})" if bad else ""
            raise ValueError(f"{where}: methods must be chosen from {', '.join(known)}, got {self.methods!r}{plugin}")
        # (none: a run that trains and scores only sets made elsewhere, README's external)
        if not self.methods and not (isinstance(self.external, dict) and self.external):
            raise ValueError(f"{where}: methods is empty and no external sets are given: list methods among "
                             f"{', '.join(known)}, or give the sets to score as external: {{LABEL: SET_DIR}}")
        for name in ("ipc", "methods"):  # (a repeat would be a second row of the same set)
            values = getattr(self, name)
            repeated = [str(v) for i, v in enumerate(values) if v in values[:i]]
            if repeated:
                raise ValueError(f"{where}: {name} lists {', '.join(dict.fromkeys(repeated))} more than once")
        if not isinstance(self.method_options, dict) or not all(isinstance(v, dict) for v in self.method_options.values()):
            raise ValueError(f"{where}: method_options must map method names to mappings of options")
        self._check_method_options(where)
        for name, opt in run_level_options().items():  # (as the methods taking them declare them)
            try:
                check_value(opt, getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        _check_count(where, "seeds", self.seeds)

    def _check_method_options(self, where: str) -> None:
        """``method_options`` names methods that make a set and have no section of their own."""
        makers = [m for m in all_methods() if m.distill is not None and not m.config_section]
        own = [m.name for m in makers if m.options]
        none = [m.name for m in makers if not m.options]  # (an empty section of one is harmless)
        stray = sorted(k for k in self.method_options if k not in own and not (k in none and not self.method_options[k]))
        if stray:
            elsewhere = [f"{m.name}'s options go in {m.config_section}" for m in all_methods() if m.config_section] \
                + [f"{m.name} trains on {m.trains_on}'s set" for m in all_methods() if m.trains_on] \
                + [f"{name} takes none" for name in none]
            raise ValueError(f"{where}: method_options: {', '.join(stray)} ({'; '.join(elsewhere)}; "
                             f"method_options takes {', '.join(own)})")

    def _check_external(self, where: str) -> None:
        """The sets given to the run: labels that are not our methods', of the run's dataset
        (refused now, not after the teachers trained)."""
        from .data import canonical_name
        from .storage import read_manifest

        if not isinstance(self.external, dict) or not all(
                isinstance(k, str) and k and "/" not in k and isinstance(v, str) for k, v in self.external.items()):
            raise ValueError(f"{where}: external must map labels (no '/') to set directories, got {self.external!r}")
        # (ignoring case: a row "infer" beside "INFER" would read as the method's own)
        taken = {spelling.casefold(): m.label for m in all_methods() for spelling in (m.label, m.name)}
        clash = sorted(label for label in self.external if label.casefold() in taken)
        if clash:
            raise ValueError(f"{where}: external label(s) {', '.join(clash)} are the names of this run's own methods "
                             f"or infer-fast's others, ignoring case "
                             f"({', '.join(dict.fromkeys(taken[c.casefold()] for c in clash))}): choose another label")
        for label, directory in self.external.items():
            manifest = read_manifest(directory)
            if manifest.get("dataset") != canonical_name(self.dataset):
                raise ValueError(f"{where}: external set {label} ({directory}) is of {manifest.get('dataset')!r}, "
                                 f"not {self.dataset!r}")

    def _check_switches(self, where: str) -> None:
        """The on/off settings, the scores' form, dynamic_epochs and the sections' form."""
        for name in ("feature_duplication", "decode_cache"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{where}: {name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.scores, (bool, dict)) and self.scores not in EVALUATION_PROTOCOLS:
            raise ValueError(f"{where}: scores must be true, false, a protocol ({', '.join(EVALUATION_PROTOCOLS)}) or a "
                             f"mapping {{protocol: NAME, OPTION: VALUE...}}, got {self.scores!r}")
        if self.dynamic_epochs is not None:  # (None: INFER+Dyn's students train epochs/(M+1))
            _check_count(where, "dynamic_epochs", self.dynamic_epochs)
        for name in dict.fromkeys([*(m.config_section for m in all_methods() if m.config_section), "student"]):
            if not isinstance(getattr(self, name, None), dict):
                raise ValueError(f"{where}: {name} must be a mapping of options")
        if "seed" in self.student:  # (student_config gives each its own: it would be ignored)
            raise ValueError(f"{where}: student: seed is the run's to set (seeds: N trains students of seeds 0..N-1): "
                             "leave it out")
        if "dynamic" in self.student:  # (it would relabel every method's students per batch, under its static name)
            per_batch = [m.name for m in all_methods() if m.student_labels == "per-batch"]
            raise ValueError(f"{where}: student: dynamic is each method's to set (the students of "
                             f"{', '.join(per_batch)} are labelled by the teachers per batch, the others' by the "
                             "set's static labels): leave it out and list those methods")

    def _check_recipes(self, where: str, written_for: Tuple[str, ...] = ()) -> Dict[str, Dict[str, Any]]:
        """The options of every method that makes a set of the run (and of every method with a
        section: sections are checked even when unused), the students, the scores' protocol
        and each method's budget at every ipc (INFER's K = 0 is refused before anything runs),
        and the compiler of a recovery the run still runs (:meth:`_makes_a_set`); the methods
        of ``written_for`` count where the students' options are checked. Returns {method:
        parsed options} of those that make a set (parsed once: the other checks read them)."""
        makers = [m.name for m in all_methods() if m.config_section] + [get_method(m).set_method for m in self.methods]
        try:
            parsed = {name: self.options_for(name) for name in dict.fromkeys(makers)
                      if get_method(name).distill is not None}
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        for name in self.methods:
            self._student_config_checked(where, name)
        self._check_labels_used(where, written_for)
        protocol = self.score_protocol(where)
        self._check_student_options_used(where, parsed, protocol, written_for)
        for name in dict.fromkeys(get_method(m).set_method for m in self.methods):
            self._check_budget(where, get_method(name), parsed[name])
            if self._makes_a_set(name):  # (a continued run whose sets are all made compiles nothing)
                self._check_compiler(where, parsed[name])
        return parsed

    def _makes_a_set(self, method: str) -> bool:
        """Whether the run still makes a set of ``method``: at some ipc its directory is not in
        the run directory's sets folder (as the run decides it, pipeline._prepare_set; a set
        whose recovery was stopped has none yet)."""
        from .pipeline import SETS_DIR

        sets = Path(self.out) / SETS_DIR
        return any(not (sets / SetKey(method, ipc).directory_name).exists() for ipc in self.ipc)

    def _check_compiler(self, where: str, options: Mapping[str, Any]) -> None:
        """A recovery compiled on the CPU finds a C++ compiler (refused now, not after the teachers trained)."""
        from .distill.config import RecoveryConfig
        from .distill.engine import check_compiler
        from .teacher import resolve_device

        config = options.get("config")
        if isinstance(config, RecoveryConfig):
            try:
                check_compiler(config, resolve_device(self.device))
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None

    def _student_config_checked(self, where: str, method: str, set_settings: Optional[Mapping[str, Any]] = None):
        """:meth:`student_config` of a seed-0 student, for the checks before any work: its
        ValueError prefixed with ``where``."""
        try:
            return self.student_config(method, 0, len(self.teachers), set_settings)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    def _check_labels_used(self, where: str, written_for: Tuple[str, ...] = ()) -> None:
        """The ``student`` section's ``labels`` is one of the choices, and some student of the run
        (or of a method of ``written_for``) takes it: the teachers label INFER+Dyn's and RDED's
        students per batch whatever it says (student_config), so ``labels: hard`` in a run of
        only those would be ignored."""
        from .options import check_values, options_of
        from .student import StudentConfig

        if "labels" not in self.student:
            return
        check_values(f"{where}: student", {"labels": options_of(StudentConfig)["labels"]}, self.student)
        if self.external:  # (the students of a set given to the run take them)
            return
        methods = list(dict.fromkeys([*self.methods, *written_for]))
        if all(self._student_config_checked(where, name).labels != self.student["labels"] for name in methods):
            raise ValueError(f"{where}: student: labels: {self.student['labels']!r} would be ignored: the teachers "
                             f"label every batch of the students of {', '.join(methods)}; list a method of static "
                             "labels (e.g. random) beside them, or leave it out")

    def _check_student_options_used(self, where: str, parsed: Mapping[str, Dict[str, Any]], protocol,
                                    written_for: Tuple[str, ...] = ()) -> None:
        """An option of the ``student`` section that no student of the run uses under the
        section's other settings (temperature with hard labels, mixup_alpha with mix none) is
        refused, as the CLI refuses it (StudentConfig.check_given): each method's students and
        the infer-fast scores' (soft labels: they take the temperature), with what the
        method's sets give their students (RDED's patches) from its parsed options. The
        methods of ``written_for`` count too (a file narrowed with --methods)."""
        from .evaluate import Protocol

        configs = []
        for name in dict.fromkeys([*self.methods, *written_for]):
            method = get_method(get_method(name).set_method)
            try:  # (what its set will record: its options; a plug-in's records may hold more)
                options = parsed[method.name] if method.name in parsed else self.options_for(method.name)
                set_settings = method.student_settings(options) if method.student_settings else {}
            except (KeyError, TypeError, ValueError):
                return  # (its students' settings are known once its set is made: any option may be theirs)
            configs.append(self._student_config_checked(where, name, set_settings))
            if isinstance(protocol, Protocol):
                configs.append(protocol.student_config("soft", True, 0, set_settings))
        if self.external:  # (the students of a set given to the run: the section's settings as they are)
            configs.append(self._student_config_checked(where, external_method(next(iter(self.external)))))
            if isinstance(protocol, Protocol):
                configs.append(protocol.student_config("soft", True, 0))
        ignored = [option for option in self.student if all(config.ignores(option) for config in configs)]
        try:
            configs[0].check_given(ignored)
        except ValueError as exc:
            raise ValueError(f"{where}: student: {exc}") from None

    def _data_spec(self):
        """(the dataset's spec, whether its class count is known) for the checks before any
        work: a registered dataset's, or with the ``num_classes`` of its mapping; an image
        folder's classes are its train split's class folders, counted (not read) when
        ``data_root`` holds them, else unknown here (the spec of 2: reading the split, the
        run's first step, says what is missing)."""
        from .data import get_spec
        from .data.folders import subdirectories as class_folders  # (as reading the split lists them)
        from .data.registry import IMAGEFOLDER, dataset_options, get_dataset

        name, options = dataset_options(self.dataset)
        if get_dataset(self.dataset).spec is not None or "num_classes" in options:
            return get_spec(self.dataset), True
        train = os.path.join(self.data_root, "train") if self.data_root else None  # (~ expanded: _expand_home)
        count = len(class_folders(train)) if name == IMAGEFOLDER and train and os.path.isdir(train) else 0
        return get_spec(self.dataset, num_classes=count or 2), count > 0

    def _check_budget(self, where: str, method, options: Dict[str, Any]) -> None:
        if method.check_budget is None:
            return
        spec, counted = self._data_spec()
        if not counted:
            return
        for ipc in self.ipc:
            try:
                method.check_budget(options, ipc, spec, len(self.teachers))
            except ValueError as exc:  # (named where its options are: method_options, or INFER's run-level ones)
                section = "" if method.config_section else f"method_options: {method.name}: "
                raise ValueError(f"{where}: {section}{exc}") from None

    def _check_models(self, where: str, parsed: Mapping[str, Dict[str, Any]]) -> None:
        """Every model the run builds, its teachers' (trained, or of pretrained weights) and its
        students' (those of the sets given to the run too), built once on the meta device (no
        memory, no weights) for the dataset's classes, channels and image size: an unknown
        name, or a model the images do not fit, is refused now rather than when it first trains
        (hours in). ``parsed``: {method: parsed options} of the methods that make a set
        (:meth:`_check_recipes`), whose recovery may match the teachers' BatchNorm statistics."""
        from .models import build_to_check, create_model
        from .ops.bn_hooks import bn_layers, matchable
        from .student import check_patches_fit

        models: Dict[str, str] = {}  # model name -> the option that names it first
        teacher_models = set()
        for i, entry in enumerate(self.teachers):
            if "path" not in entry:  # (a checkpoint's model is checked when it loads, before any work)
                try:
                    name = entry["model"] if entry.get("pretrained") else self.teacher_config(i).model
                except ValueError as exc:
                    raise ValueError(f"{where}: {exc}") from None
                models.setdefault(name, f"teachers[{i}]")
                teacher_models.add(name)
        students = {method: self._student_config_checked(where, method)
                    for method in [*self.methods, *map(external_method, self.external)]}
        for student in students.values():
            models.setdefault(student.model, "student")
        # (an image folder's class count, where unknown yet: any count builds the same layers)
        spec, _ = self._data_spec()
        for method in self.methods:  # (the sets made here are of the data's size; an external set's is its own)
            try:
                check_patches_fit(students[method], spec.image_size, option="student: patches")
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        matching = [m for m in dict.fromkeys(get_method(m).set_method for m in self.methods)
                    if get_method(m).needs_bn_statistics(parsed[m])]
        for name, option in models.items():
            try:
                model = build_to_check(lambda: create_model(name, num_classes=spec.num_classes,
                                                            in_channels=spec.channels, image_size=spec.image_size))
            except ValueError as exc:
                raise ValueError(f"{where}: {option}: model {name!r}: {exc}") from None
            if name in teacher_models and matching:  # (refused now, not after the teachers trained)
                try:
                    matchable(bn_layers(model), f"model {name!r}")
                except ValueError as exc:
                    verb = "match" if len(matching) > 1 else "matches"
                    raise ValueError(f"{where}: {option}: {exc} ({', '.join(matching)} {verb} the teachers' "
                                     "BatchNorm statistics)") from None


def method_sections() -> Tuple[str, ...]:
    """The sections of a run config that hold a method's options (Method.config_section)."""
    return tuple(f.name for f in dataclasses.fields(PipelineConfig) if f.metadata.get("method_section"))


def distillation_seed(recovery: Mapping[str, Any]) -> int:
    """The distillation seed a run config's ``recovery`` section gives (default 0)."""
    return recovery.get("seed", 0)


def shared_recovery_settings(method, recovery: Mapping[str, Any]) -> Dict[str, Any]:
    """The settings of a run config's ``recovery`` section that ``method`` takes too
    (Method.shared_recovery_options, those among its options)."""
    return {k: recovery[k] for k in method.shared_recovery_options if k in recovery and k in method.option_names}


def build_config(cls, values: Dict[str, Any], name: str):
    """``cls`` made (so checked) from a run config's section ``name`` (lists from YAML as tuples),
    its errors prefixed with the section."""
    from .options import make_config

    try:
        return make_config(cls, {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def load_pipeline_config(path: str, **overrides: Any) -> PipelineConfig:
    """A PipelineConfig from a YAML file; ``overrides`` (the command line's: not None) replace
    its values. A setting of the file that none of the run's methods takes is refused
    (:func:`check_ignored_settings`); a method listed in the file or on the command line
    counts (narrowing a run with --methods leaves the file's other settings valid, and the
    ``student`` options their students use: PipelineConfig's ``written_for``)."""
    from .config import load_yaml

    in_file = _as_fields(load_yaml(path, command="run"))
    written_for = in_file.get("methods", _default("methods"))
    written_for = [m.strip() for m in written_for if isinstance(m, str) and m.strip() in run_method_names()] \
        if isinstance(written_for, list) else []
    given = {k: v for k, v in overrides.items() if v is not None}
    # (an error may come from a value the command line gave: the prefix says which ones there are)
    where = f"{path} with {', '.join('--' + k.replace('_', '-') for k in given)}" if given else path
    cfg = PipelineConfig.from_dict({**in_file, **given}, where=where, written_for=tuple(written_for))
    check_ignored_settings(cfg, set(in_file), list(dict.fromkeys([*written_for, *cfg.methods])), path)
    return cfg


def _as_fields(values: Mapping[str, Any]) -> Dict[str, Any]:
    """A config's values under PipelineConfig's field names ("data-root" is data_root), an
    ipc given as one int a list of one, methods given as "a,b" a list."""
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    if isinstance(values.get("ipc"), int):
        values["ipc"] = [values["ipc"]]
    if isinstance(values.get("methods"), str):
        values["methods"] = [m.strip() for m in values["methods"].split(",") if m.strip()]
    return values


def _default(name: str) -> Any:
    """The default of the PipelineConfig field ``name``."""
    f = PipelineConfig.__dataclass_fields__[name]
    return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()


def check_ignored_settings(cfg: PipelineConfig, given: Set[str], methods: List[str], where: str) -> None:
    """ValueError naming the first setting among ``given`` (the names a config file sets) that
    none of ``methods`` takes, as it would be ignored: a ``method_options`` entry or a method's
    section (past the ``recovery`` settings the others share, e.g. the seed) of a method not
    listed, or a run-level setting of one (INFER's selection, accounting) other than its default,
    or ``dynamic_epochs`` where no method reduces its students' epochs (reduced_student_epochs)."""
    makers = {get_method(m).set_method: get_method(get_method(m).set_method) for m in methods}
    listed = ", ".join(methods) or "none: it scores only its external sets"
    stray = sorted(set(cfg.method_options) - set(makers))
    if stray:
        raise ValueError(f"{where}: method_options: {', '.join(stray)} is not among the run's methods ({listed}): "
                         "its options would be ignored; add it to methods or remove them")
    # (recovery's seed is the run's, every set's: PipelineConfig.seed)
    shared = {"seed"} | {k for m in makers.values() for k in m.shared_recovery_options if k in m.option_names}
    for method in all_methods():
        section = method.config_section
        if section and section in given and method.name not in makers:
            unused = sorted(set(getattr(cfg, section)) - (shared if section == "recovery" else set()))
            if unused:
                raise ValueError(f"{where}: {section}: {', '.join(unused)} would be ignored: {method.name}, whose "
                                 f"setting it is, is not among the run's methods ({listed})")
        for name in method.run_options:
            taken = any(name in m.run_options for m in makers.values())
            if name in given and not taken and getattr(cfg, name) != _default(name):
                raise ValueError(f"{where}: {name}: {getattr(cfg, name)!r} would be ignored: it is {method.name}'s "
                                 f"setting, and {method.name} is not among the run's methods ({listed})")
    if "dynamic_epochs" in given and cfg.dynamic_epochs is not None \
            and not any(get_method(m).reduced_student_epochs for m in methods):
        reducing = ", ".join(m.name for m in all_methods() if m.reduced_student_epochs)
        raise ValueError(f"{where}: dynamic_epochs: {cfg.dynamic_epochs!r} would be ignored: it is the student epochs "
                         f"of {reducing}, not among the run's methods ({listed})")

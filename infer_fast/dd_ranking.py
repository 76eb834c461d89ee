"""DD-Ranking's evaluation protocol, point by point, for scores to put beside its leaderboard.

    report = evaluate_set_dd_ranking(load_distilled("sets/infer10"), teachers, DDRankingProtocol())

Read from NUS-HPC-AI-Lab/DD-Ranking (ddranking/metrics/soft_label.py, aug_robust.py,
ddranking/utils/train_and_eval.py and its per-method configs, e.g. SRe2L/CIFAR10/IPC10.yaml):

- **Rounds**: 5, seeded 0, 1, 42, 1234, 3407 (its ``seed_list``); mean and population std.
- **Accuracy of a run**: the best of the test accuracies measured every 20 epochs
  (``test_interval``), not the final epoch's.
- **Learning-rate grid** [0.001, 0.005, 0.01, 0.05, 0.1]: a run's accuracy is the best over
  the grid (the first rate wins ties), always for the set's hard-label run and for the random
  subset's runs; the set's soft-label runs use ``set_lr`` when given, else the grid too.
- **Student**: AdamW (weight decay 0.01), DD-Ranking's "cosine" (per epoch, 0.5 (1 + cos(pi e
  / 2E)): the rate decays to half), batch 256, KL at the config's temperature. Per dataset
  family (its SRe2L configs): CIFAR-like RandomCrop + flip, mixup 0.8, T 30, 400 epochs;
  Tiny-ImageNet RandomResizedCrop + flip, CutMix 1.0, T 20, 400 epochs; ImageNet-1k the same
  with T 3, 300 epochs. The crop and flip are the dataset transform there, so they apply to
  every run; "without augmentation" (hard-label runs, ARS's plain runs) drops the batch
  mixing only.
- **Soft labels** "M" (``soft_labels="per-batch"``, every soft-label leaderboard config but
  DATM's): the teachers' mean logits on every augmented, mixed batch; "S" ("static"): stored.
- **HLR** = full-data hard accuracy - the set's hard accuracy (no mixing); **IOR** = set soft -
  random soft; **LRS** from them. **ARS** from its own evaluation: the set and a random subset
  with and without mixing, four more grid searches per round, students of their own draws.
- **Full-data accuracy**: DD-Ranking's cached values (ImageNet-1k 56.5, Tiny-ImageNet 46.4,
  ResNet-18-BN), else a checkpoint of the students' architecture that records its accuracy,
  else trained here in every round with our teacher recipe (DD-Ranking retrains per round
  with its REAL_DATA_TRAINING_CONFIG).
- **Scores** on both scales: the documented [0, 1] (accuracies as fractions) and the numbers
  DD-Ranking's code prints (percent into exp(): ``scores.printed_label_robust_score``).

Not reproduced: its random subsets are its own files; ours are drawn from the round's seed's
own stream (evaluate.random_subset; ``random_subset_seed`` fixes one subset for every round).
``reuse``: the memo of students of one run, as evaluate.evaluate_set's; ``checkpoints``: the
folder where every student (each round, rate and run) and each round's full-data run are
checkpointed and continued, as evaluate.evaluate_set's."""
from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from torch import nn

from .choices import SOFT_LABEL_MODES
from .options import CheckedWhenMade, check_fields, given_config, hold_as_made, make_config, option
from .scores import (DEFAULT_WEIGHT, FULL_DATA_EPOCHS, augmentation_robust_score, check_weight_option,
                     hard_label_recovery, improvement_over_random, label_robust_score,
                     printed_augmentation_robust_score, printed_label_robust_score)

PROTOCOL_NAME = "dd-ranking"
LR_GRID = (0.001, 0.005, 0.01, 0.05, 0.1)  # its _hyper_param_search_* lr_list
TEST_INTERVAL = 20  # epochs between test evaluations (its test_interval)
ROUND_SEEDS = (0, 1, 42, 1234, 3407)  # its seed_list; rounds beyond the fifth: 10000 + round
ARS_SEED_OFFSET = 100_003  # ARS's students draw their own initialization and batches
# DD-Ranking's student per dataset family (its SRe2L configs; keys: data.registry.DATASET_FAMILIES); lr is the grid's
FAMILY_RECIPES: Dict[str, Dict[str, Any]] = {
    "cifar": dict(model="resnet18", augmentation="crop_flip", mix="mixup", mixup_alpha=0.8, temperature=30.0,
                  epochs=400),
    "tiny-imagenet": dict(model="resnet18", augmentation="resized_crop_flip", mix="cutmix", mixup_alpha=1.0,
                          temperature=20.0, epochs=400),
    "imagenet": dict(model="resnet18-imagenet", augmentation="resized_crop_flip", mix="cutmix", mixup_alpha=1.0,
                     temperature=3.0, epochs=300),
}
SHARED_RECIPE = dict(batch_size=256, weight_decay=0.01, schedule="half-cosine")
# its REAL_DATA_ACC_CACHE: full-data hard-label accuracy of ResNet-18-BN, by (dataset, classes, size)
FULL_DATA_ACCURACY = {("imagenet", 1000, 224, "resnet18-imagenet"): 0.565,
                      ("tiny-imagenet", 200, 64, "resnet18"): 0.464}
SET_BY_PROTOCOL = ("labels", "seed", "dynamic", "lr", "eval_every", "schedule")
SCORE_NAMES = ("hlr", "ior", "lrs", "ars")


def round_seed(index: int) -> int:
    return ROUND_SEEDS[index] if index < len(ROUND_SEEDS) else 10_000 + index


@dataclass(frozen=True)
class DDRankingProtocol(CheckedWhenMade):
    """``recipe``: a key of FAMILY_RECIPES (None: the set's dataset's family); ``student``:
    StudentConfig fields over it (model, epochs, batch_size, temperature, augmentation, mix...;
    not the rate, which the grid sets); ``set_lr``: the set's own student rate for its
    soft-label runs (None: the grid); ``soft_labels``: "per-batch" (M) or "static" (S)."""

    recipe: Optional[str] = field(default=None, metadata=option(
        "the students' recipe family", choices=tuple(FAMILY_RECIPES), none="the set's dataset's family"))
    student: Dict[str, Any] = field(default_factory=dict, metadata=option("StudentConfig fields over the recipe"))
    rounds: int = field(default=5, metadata=option("rounds (DD-Ranking's seeds)", minimum=1))
    lr_grid: Tuple[float, ...] = field(default=LR_GRID, metadata=option("the learning rates searched"))
    set_lr: Optional[float] = field(default=None, metadata=option(
        "the set's own rate for its soft-label runs", above=0, none="the grid"))
    test_interval: int = field(default=TEST_INTERVAL, metadata=option("epochs between test evaluations", minimum=1))
    weight: float = field(default=DEFAULT_WEIGHT, metadata=option(
        "w of LRS and ARS, in [0, 1]", check=check_weight_option))  # (the range on the flag too: argparse says it)
    soft_labels: str = field(default="per-batch", metadata=option(
        "the teachers' labels on every batch (M), or the set's stored ones (S)", choices=SOFT_LABEL_MODES))
    random_subset_seed: Optional[int] = field(default=None, metadata=option(
        "one random subset for every round", minimum=0, none="drawn with each round's seed"))
    full_data_epochs: int = field(default=FULL_DATA_EPOCHS, metadata=option("epochs of the full-data run", minimum=1))

    def validate(self) -> None:
        """The protocol's own settings, and its students' under the recipe it names (CIFAR's
        when it follows the set's dataset: :meth:`check_dataset` checks that family's)."""
        check_fields(self)  # each field's type, range and choices, as declared above
        hold_as_made(self)  # (its own copy of the student fields: the caller's dict may change)
        for name in SET_BY_PROTOCOL:
            if name in self.student:
                raise ValueError(f"student: {name} is set by the DD-Ranking protocol itself"
                                 + (" (the rate: lr_grid, or set_lr for the set's soft-label runs)" if name == "lr" else ""))
        grid = tuple(self.lr_grid) if isinstance(self.lr_grid, (list, tuple)) else ()
        if not grid or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0
                           for v in grid):
            raise ValueError(f"lr_grid must be a non-empty list of positive learning rates, got {self.lr_grid!r}")
        self.check_dataset("cifar10")

    def check_dataset(self, dataset: Any) -> None:
        """ValueError unless the students of a set of ``dataset`` can be made: their
        config under that dataset's family recipe (made, so checked) and its epochs."""
        config = self.student_config(dataset, "soft", True, self.lr_grid[0], 0)
        if config.epochs < self.test_interval:
            raise ValueError(f"epochs ({config.epochs}) must be at least test_interval ({self.test_interval}): the "
                             "protocol's accuracy is the best of the tests every test_interval epochs")

    def recipe_for(self, dataset: Any) -> str:
        """The FAMILY_RECIPES key of ``dataset``'s students: ``recipe``, else the dataset's
        recipe family (a name, or a mapping with its image size: data.registry.recipe_family)."""
        from .data.registry import recipe_family

        return self.recipe or recipe_family(dataset)

    def settings(self, dataset: Any) -> Dict[str, Any]:
        """The protocol as a report of a set of ``dataset`` records it (``protocol``, beside what
        follows from it): its name and fields, the grid as floats, the recipe family it used."""
        return {"name": PROTOCOL_NAME, **dataclasses.asdict(self), "lr_grid": list(self.grids()[0]),
                "recipe": self.recipe_for(dataset)}

    def grids(self) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
        """(the rates searched for the set's hard run and the random subset's runs, those of
        the set's soft-label runs: ``set_lr`` alone when given)."""
        grid = tuple(float(v) for v in self.lr_grid)
        return grid, grid if self.set_lr is None else (float(self.set_lr),)

    def student_count(self) -> int:
        """Students an evaluation trains: per round the set's hard run and the random subset's
        three on the grid, the set's three soft-label runs on theirs."""
        grid, set_grid = self.grids()
        return self.rounds * (len(grid) * 4 + len(set_grid) * 3)

    def student_model(self, dataset: Any) -> str:
        return self.student_config(dataset, "hard", False, self.lr_grid[0], 0).model

    def student_config(self, dataset: Any, labels: str, mixed: bool, lr: float, seed: int,
                       set_settings: Optional[Dict[str, Any]] = None):
        """The StudentConfig of one run: the family's recipe, what the set's method gives its
        students (``set_settings``: RDED's augmentation, as DD-Ranking's RDED scripts pass its
        ShufflePatches and crop as their train transform), the protocol's overrides, ``lr`` (a
        StudentConfig is checked when made)."""
        from .student import StudentConfig

        values = {**SHARED_RECIPE, **FAMILY_RECIPES[self.recipe_for(dataset)], **(set_settings or {}), **self.student}
        values.update(labels=labels, seed=seed, lr=float(lr), eval_every=self.test_interval, schedule="half-cosine",
                      dynamic=labels == "soft" and self.soft_labels == "per-batch")
        if not mixed:
            values["mix"] = "none"
        return make_config(StudentConfig, values)


def periodic_best(history: Sequence[Dict[str, Any]], interval: int) -> float:
    """A run's accuracy under DD-Ranking: the best test accuracy among the epochs that are
    multiples of ``interval``."""
    tested = [r["test_accuracy"] for r in history if r["epoch"] % interval == 0 and "test_accuracy" in r]
    if not tested:
        raise ValueError(f"no test evaluation at a multiple of {interval} epochs")
    return max(tested)


def _summary(values: Sequence[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values)}


class _Runs:
    """Trains the students of an evaluation, one grid search at a time, with one bar
    (``students``: evaluate.Students, which keeps them in the caller's memo)."""

    def __init__(self, protocol: DDRankingProtocol, dataset: Any, students, device: str, total: int,
                 progress: bool, set_settings: Dict[str, Any]):
        from .progress import progress_bar

        self.protocol, self.dataset, self.students, self.set_settings = protocol, dataset, students, set_settings
        self.device = device
        self.bar = progress_bar(total=total, desc="DD-Ranking students", unit="student", disable=not progress)

    def best(self, source: Callable[[], Any], identity: Callable[[Any], Dict[str, Any]], labels: str, mixed: bool,
             seed: int, grid: Sequence[float]) -> Dict[str, Any]:
        """{"accuracy", "lr", "grid": {lr: accuracy}}: the best run over ``grid`` on ``source()``
        (``identity``: its evaluate.Students identity under a config)."""
        found: Dict[str, float] = {}
        best_acc, best_lr = -1.0, None
        for lr in grid:
            config = dataclasses.replace(self.protocol.student_config(self.dataset, labels, mixed, lr, seed,
                                                                      self.set_settings), device=self.device)
            result = self.students.train(source, identity(config), config, progress=False)
            acc = periodic_best(result["history"], self.protocol.test_interval)
            found[repr(float(lr))] = acc
            if acc > best_acc:  # strictly: the first rate wins a tie, as its search
                best_acc, best_lr = acc, float(lr)
            self.bar.update(1)
            self.bar.set_postfix(last=f"{100 * acc:.2f}%")
        return {"accuracy": best_acc, "lr": best_lr, "grid": found}

    def close(self) -> None:
        self.bar.close()


def cached_full_data(distilled, model: str) -> Optional[Tuple[str, float]]:
    """(the cached model, its accuracy): DD-Ranking's cached full-data accuracy for students
    ``model`` of the set ``distilled``'s data (FULL_DATA_ACCURACY), None where it has none."""
    from .evaluate import same_architecture

    for (dataset, classes, size, cached_model), accuracy in FULL_DATA_ACCURACY.items():
        if (dataset, classes, size) == (distilled.dataset, distilled.num_classes, distilled.height) \
                and same_architecture(model, cached_model):
            return cached_model, accuracy
    return None


def _full_data(protocol: DDRankingProtocol, distilled, model: str, data_root, device: str, checkpoint,
               progress: bool, reuse: Optional[Dict[str, Any]] = None, checkpoints: Optional[str] = None):
    """(accuracy for round i, what the report records of it: its ``source``...): DD-Ranking's
    cached value where it has one (a checkpoint given beside it is not read: its leaderboard's
    value comes first), else the checkpoint (evaluate.checkpoint_full_data), else trained each
    round (checkpointed in the folder ``checkpoints`` when one is given)."""
    from ._text import count_text
    from .evaluate import check_full_data_checkpoint, checkpoint_full_data, train_full_data

    cached = cached_full_data(distilled, model)
    if cached is not None:
        cached_model, accuracy = cached
        unused = f"; {checkpoint} given, not read" if checkpoint is not None else ""
        return ((lambda i, a=accuracy: a),
                {"source": f"DD-Ranking's cached value for {distilled.dataset} with ResNet-18-BN ({cached_model}){unused}",
                 "epochs": None, "trained_here": False})
    if checkpoint is not None:
        meta = check_full_data_checkpoint(checkpoint, model, distilled.real_dataset, distilled.class_names)
        return (lambda i: float(meta["test_accuracy"])), checkpoint_full_data(checkpoint, meta)
    accuracies: Dict[int, float] = {}

    def trained(i: int) -> float:
        if i not in accuracies:
            accuracies[i] = train_full_data(model, distilled.real_dataset, data_root, device, protocol.full_data_epochs,
                                            progress, seed=round_seed(i), student=protocol.student, reuse=reuse,
                                            checkpoints=checkpoints)
        return accuracies[i]
    return trained, {"source": f"trained here in every round: {model}, {count_text(protocol.full_data_epochs, 'epoch')} "
                     "of the teacher recipe", "epochs": protocol.full_data_epochs, "trained_here": True}


def evaluate_set_dd_ranking(
    distilled, teachers: Sequence[nn.Module], protocol: Optional[DDRankingProtocol] = None, *,
    data_root: Optional[str] = None, full_data_checkpoint: Optional[str] = None, device: str = "auto",
    progress: bool = True, decode_cache: Optional[str] = None, reuse: Optional[Dict[str, Any]] = None,
    checkpoints: Optional[str] = None,
) -> Dict[str, Any]:
    """The DD-Ranking evaluation report of ``distilled`` (see the module docstring): every
    accuracy behind the scores with its grid, the scores per round on both scales and their
    mean and std. ``teachers`` label the soft-label runs (per batch) or the random subsets
    (with static labels they must be those that labelled the set: evaluate.labelling_teachers);
    ``reuse``: the memo of students a caller keeps across the sets of one run; ``checkpoints``:
    the folder where the students and full-data runs are checkpointed and continued."""
    from ._io import model_digest
    from .data import load_dataset, load_test_split
    from .evaluate import (Students, check_evaluable, checkpoints_held, labelling_teachers, random_subset,
                           random_subset_text)
    from .methods.registry import set_student_settings
    from .teacher import check_distinct_teachers, teacher_list

    protocol = given_config("protocol", protocol, DDRankingProtocol, DDRankingProtocol)
    teachers = teacher_list(teachers)  # (one model, or a generator read once: every round's students take them)
    dataset = distilled.real_dataset  # (with its image size: the recipe family, recipe_family)
    protocol.check_dataset(dataset)
    static = protocol.soft_labels == "static"
    ipc = check_evaluable(distilled, teachers, device, static)
    digests = [model_digest(t) for t in teachers]
    check_distinct_teachers(digests)
    labelled_by = labelling_teachers(distilled, digests, static)
    model = protocol.student_model(dataset)
    full_data, full_source = _full_data(protocol, distilled, model, data_root, device, full_data_checkpoint, progress,
                                        reuse, checkpoints)
    train = load_dataset(distilled.real_dataset, "train", data_root=data_root, progress=progress)
    test = load_test_split(distilled.real_dataset, data_root=data_root, decode_cache=decode_cache, progress=progress)

    grid, set_grid = protocol.grids()
    students = Students(reuse, test, teachers, digests, distilled.real_dataset, data_root, checkpoints)
    runs = _Runs(protocol, dataset, students, device, protocol.student_count(), progress,
                 set_student_settings(distilled))
    rounds: List[Dict[str, Any]] = []
    with checkpoints_held(checkpoints, "evaluate_set_dd_ranking"):  # (the rounds' full-data runs train in there too)
        try:
            for i in range(protocol.rounds):
                seed = round_seed(i)
                subset_seed = seed if protocol.random_subset_seed is None else protocol.random_subset_seed
                # (drawn and labelled once, when a student of it is first trained)
                random = functools.cache(functools.partial(random_subset, train, ipc, subset_seed, teachers, device, static))

                def the_set() -> Any:
                    return distilled

                def random_identity(config) -> Dict[str, Any]:
                    return students.of_random_subset(ipc, subset_seed)

                def set_identity(config) -> Dict[str, Any]:
                    return students.of_set(distilled, config)
                ars_seed = seed + ARS_SEED_OFFSET
                r = {
                    "set_hard": runs.best(the_set, set_identity, "hard", False, seed, grid),
                    "set_soft": runs.best(the_set, set_identity, "soft", True, seed, set_grid),
                    "random_soft": runs.best(random, random_identity, "soft", True, seed, grid),
                    "set_aug": runs.best(the_set, set_identity, "soft", True, ars_seed, set_grid),
                    "random_aug": runs.best(random, random_identity, "soft", True, ars_seed, grid),
                    "set_plain": runs.best(the_set, set_identity, "soft", False, ars_seed, set_grid),
                    "random_plain": runs.best(random, random_identity, "soft", False, ars_seed, grid),
                }
                full = full_data(i)
                rounds.append(_round_record(seed, subset_seed, r, full, protocol.weight))
                if progress:
                    runs.bar.write(f"round {i + 1}/{protocol.rounds} (seed {seed}): " + ", ".join(
                        f"{k} {100 * v['accuracy']:.2f}%" for k, v in r.items()) + f", full data {100 * full:.2f}%")
        finally:
            runs.close()
    student_config = dataclasses.replace(protocol.student_config(dataset, "soft", True, grid[0], 0, runs.set_settings),
                                         device=device)  # (as the students train: on ``device``)
    random_subset_line = random_subset_text(ipc, "the round's seed" if protocol.random_subset_seed is None
                                            else f"seed {protocol.random_subset_seed} in every round", static,
                                            labelled_by)
    return _report(distilled, protocol, dataset, rounds, labelled_by, student_config, random_subset_line,
                   full_source)


def _round_record(seed: int, subset_seed: int, runs: Dict[str, Dict[str, Any]], full: float,
                  weight: float) -> Dict[str, Any]:
    """One round of the report: its runs, the full-data accuracy and the scores on both scales."""
    acc = {k: v["accuracy"] for k, v in runs.items()}
    hlr = hard_label_recovery(full, acc["set_hard"])
    ior = improvement_over_random(acc["set_soft"], acc["random_soft"])
    return {
        "seed": seed, "random_subset_seed": subset_seed, "runs": runs, "full_hard": full,
        "scores": {"hlr": hlr, "ior": ior, "lrs": label_robust_score(hlr, ior, weight),
                   "ars": augmentation_robust_score(acc["set_aug"], acc["random_aug"], acc["set_plain"],
                                                    acc["random_plain"], weight)},
        "printed": {"hlr": 100 * hlr, "ior": 100 * ior, "lrs": printed_label_robust_score(hlr, ior, weight),
                    "ars": printed_augmentation_robust_score(acc["set_aug"], acc["random_aug"],
                                                             acc["set_plain"], acc["random_plain"], weight)},
    }


def _report(distilled, protocol: DDRankingProtocol, dataset, rounds: List[Dict[str, Any]],
            labelled_by: Dict[str, Any], student_config, random_subset_line: str,
            full_source: Dict[str, Any]) -> Dict[str, Any]:
    """The report of ``rounds``: the set, the protocol, and each accuracy and score's mean and std
    (``full_source``: what _full_data says of the full-data accuracy)."""
    from .evaluate import REPORT_FORMAT, protocol_settings

    run_names = tuple(rounds[0]["runs"])
    return {
        "format": REPORT_FORMAT,
        "set": {"method": distilled.method, "dataset": distilled.dataset, "budget": dict(distilled.budget),
                "training_images": distilled.num_training_images(), "labelling_teachers": labelled_by},
        "protocol": {
            **protocol_settings(protocol, full_source, dataset), "round_seeds": [r["seed"] for r in rounds],
            "student_config": dataclasses.asdict(student_config),
            "accuracy_of_a_run": f"best of the tests every {protocol.test_interval} epochs, best over the rate grid",
            "random_subset": random_subset_line,
        },
        "full_data_hard": {"accuracy": _summary([r["full_hard"] for r in rounds])["mean"], **full_source,
                           "per_round": [r["full_hard"] for r in rounds]},
        "accuracy": {k: _summary([r["runs"][k]["accuracy"] for r in rounds]) for k in run_names},
        "scores": {k: _summary([r["scores"][k] for r in rounds]) for k in SCORE_NAMES},
        "scores_printed": {k: _summary([r["printed"][k] for r in rounds]) for k in SCORE_NAMES},
        "per_round": rounds,
    }


def format_dd_ranking_report(report: Dict[str, Any]) -> str:
    """The DD-Ranking report as a short table (accuracies in %, mean +- std over rounds)."""
    from .evaluate import report_student, unchecked_teachers_line

    def pct(summary):
        return f"{100 * summary['mean']:6.2f} +- {100 * summary['std']:5.2f}"

    s, p = report["set"], report["protocol"]
    lines = [f"{s['method']} set on {s['dataset']} (budget {s['budget']}), {report_student(report)} students, "
             f"{len(p['round_seeds'])} round(s); "
             f"protocol {PROTOCOL_NAME} ({p['accuracy_of_a_run']}; {p['soft_labels']} soft labels)"]
    lines += [f"{name:<13} {pct(summary):>16}" for name, summary in report["accuracy"].items()]
    lines.append(f"full data, hard labels: {100 * report['full_data_hard']['accuracy']:.2f} "
                 f"({report['full_data_hard']['source']})")
    unit, printed = report["scores"], report["scores_printed"]
    lines.append("scores on [0, 1] (x 100): " + ", ".join(f"{k.upper()} {pct(unit[k])}" for k in SCORE_NAMES))
    lines.append("as DD-Ranking's code prints them: " + ", ".join(
        f"{k.upper()} {format_printed(printed[k]['mean'])} +- {format_printed(printed[k]['std'])}" for k in SCORE_NAMES))
    return "\n".join(lines + unchecked_teachers_line(report))


PRINTED_DECIMALS = 3
PRINTED_FIXED_BELOW = 1e6  # (its exp() of percentages explodes above +10 points: larger values in e-notation)


def format_printed(value: float) -> str:
    """A number on DD-Ranking's printed scale: PRINTED_DECIMALS decimals (a mean and its std
    alike), in e-notation from PRINTED_FIXED_BELOW."""
    return f"{value:.{PRINTED_DECIMALS}{'f' if abs(value) < PRINTED_FIXED_BELOW else 'e'}}"

"""The ``infer-fast`` command line. User errors print one line and exit non-zero."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import os
import signal
import sys
import threading
import warnings
from typing import Dict, List, Optional, Tuple

from . import __version__, interrupts
from ._text import count_text, first_line
from .checks import check_int
from .choices import DEVICE_CHOICES, EVALUATION_PROTOCOLS, EXPORT_NAMINGS
from .config import comma_list, path_list, positive_floats, positive_ints, preset_names
from .options import PATH, Option, add_flags, options_of


class UserError(Exception):
    """An error the user can fix (bad option, missing file...): shown without a traceback."""


def cmd_info(args: argparse.Namespace) -> None:
    from .info import cuda_check, format_info

    if not args.check:
        print(format_info())
        return
    ok, reason = cuda_check()
    if not ok:  # status 1 with the reason (SystemExit passes main's handler, which prints errors)
        _last_line(f"infer-fast info --check: FAILED: {reason}")
        raise SystemExit(1)
    print(f"infer-fast info --check: ok: {reason}")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    _one_process("demo", "`infer-fast run` takes torchrun")
    given = {"seeds": args.seeds} if args.seeds is not None else {}  # (else the demo's)
    run_demo(out_dir=args.out, iterations=args.iterations, epochs=args.epochs, progress=not args.quiet, **given)


def cmd_run(args: argparse.Namespace) -> None:
    from .distributed import init_from_env, same_outcome
    from .pipeline import format_table, run_pipeline
    from .results import RESULTS_FILE, RUN_REPORT

    rank, _ = init_from_env()  # under torchrun: teachers, recovery and student runs split across the ranks
    with same_outcome():  # (a rank whose config file is missing or wrong stops every rank)
        config = _run_config(args)
    results = run_pipeline(config, progress=not args.quiet)
    if args.quiet and rank == 0:  # the table is the result, and where it is kept: shown even without progress output
        print(format_table(results))
        print(f"results in {os.path.join(config.out, RESULTS_FILE)} and {os.path.join(config.out, RUN_REPORT)}")


def _run_config(args: argparse.Namespace):
    """The `run` command's config: its file, with the options given in its place."""
    from .pipeline import load_pipeline_config

    overrides = {"out": args.out, "seeds": args.seeds, "device": args.device, "data_root": args.data_root}
    for flag, value in (("--teachers", args.teachers), ("--methods", args.methods)):
        if value is not None and not comma_list(value):  # (an empty value is not "as the config says")
            raise UserError(f"{flag} is empty: name at least one, comma-separated, or leave it out")
    if args.teachers is not None:
        overrides["teachers"] = [{"path": p} for p in comma_list(args.teachers)]
    if args.ipc is not None:
        overrides["ipc"] = positive_ints("--ipc", args.ipc)
    if args.methods is not None:
        overrides["methods"] = comma_list(args.methods)
    return load_pipeline_config(args.config, **overrides)


def cmd_models(args: argparse.Namespace) -> None:
    from .models import model_table

    rows = model_table()
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'inputs':<12} {'params (10 cl.)':>15}  description")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['inputs']:<12} {r['params']:>15,}  {r['description']}")
    print("\nAlso: torchvision:NAME and timm:NAME when those libraries are installed.")
    _print_pretrained_weights()


def _print_pretrained_weights() -> None:
    """Which torchvision ImageNet weight files `pretrained: true` reads, and which are here."""
    from .models import pretrained_weights_table, torchvision_cache_dir_problem

    folder, rows, fetch = pretrained_weights_table()
    torch_home = os.environ.get("TORCH_HOME")
    how = f"from TORCH_HOME={torch_home}" if torch_home else "set TORCH_HOME to use TORCH_HOME/hub/checkpoints"
    problem = torchvision_cache_dir_problem()
    print(f"\nPretrained ImageNet weights (pretrained: true; never downloaded), looked for in torch hub's checkpoints "
          f"folder ({how}):\n  {folder}{f'  ({problem})' if problem else ''}")
    width = max(len(r["name"]) for r in rows)
    file_width = max(len(r["files"][0]) for r in rows)
    print(f"{'model':<{width}}  {'file':<{file_width}}  status")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['files'][0]:<{file_width}}  {r['status']}")
    print("Older versions of a file (the same name, another hash) are used too. torchvision:NAME reads "
          "torchvision's own file for its weights from the same folder.")
    if fetch:
        print(f"To fetch the missing ones where there is internet: {fetch}, then copy the files into the folder above.")


def cmd_datasets(args: argparse.Namespace) -> None:
    from .data import get_spec, list_datasets

    for name in list_datasets():
        try:
            spec = get_spec(name)
        except ValueError:  # imagefolder: classes and size come from the folder
            print(f"{name:<18} classes and size from the folder")
            continue
        print(f"{name:<18} {spec.num_classes:>5} classes  {spec.channels}x{spec.image_size}x{spec.image_size}  {spec.description}")


def teacher_options() -> Dict[str, Option]:
    """The teacher command's options: TeacherConfig's fields (train a teacher), and its own."""
    from .teacher import TeacherConfig

    return {**options_of(TeacherConfig), **{o.name: o for o in (
        Option("out", PATH, "checkpoint file to write"),
        Option("pretrained", str, "write MODEL's pretrained weights (e.g. resnet18-imagenet) as the teacher instead of "
               "training one; takes --dataset (default imagenet), --weights, --out only", metavar="MODEL"),
        Option("weights", PATH, "with --pretrained: the weights file (a state dict of MODEL's layout: torchvision's, or "
               "a teacher of the INFER release for its CIFAR models) instead of the torch hub cache", metavar="FILE"),
    )}}


def _as_given(args: argparse.Namespace, names: List[str], declared: Dict[str, Option]) -> str:
    """"--a, --b do not apply" / "x (config file 'f.yaml') does not apply": the options
    ``names`` (a command's fields) as the user gave them, a flag (set in ``args``) or a key of
    the --config file (merge: a flag given overrides the file's value)."""
    flags = sorted(declared[k].flag_name if k in declared and declared[k].flag_name else f"--{k.replace('_', '-')}"
                   for k in names if getattr(args, k, None) is not None)
    keys = sorted(k for k in names if getattr(args, k, None) is None)
    said = flags + ([f"{', '.join(keys)} (config file {args.config!r})"] if keys else [])
    return f"{', '.join(said)} {'does' if len(names) == 1 else 'do'} not apply"


def _check_device(flag: str, device: Optional[str]) -> None:
    """``device`` a name teacher.resolve_device takes, said with ``flag`` (its own check says
    "device"); whether the GPU is there is resolve_device's to say."""
    from .teacher import device_named

    if device is not None and device != "auto":
        device_named(device, flag)


def _one_process(command: str, instead: str) -> None:
    """``command`` runs in one process: under torchrun every rank would do the same work and
    write the same output."""
    from .distributed import launched_world_size

    if launched_world_size() > 1:
        raise UserError(f"infer-fast {command} runs in one process, not under torchrun ({instead})")


def cmd_teacher(args: argparse.Namespace) -> None:
    from .config import merge
    from .output_lock import output_lock
    from .teacher import TeacherConfig, train_teacher

    _one_process("teacher", "`infer-fast run` trains several teachers across the ranks")
    _check_device("--device", args.device)
    declared = teacher_options()
    options = merge(args, args.config, declared, declared)
    out = options.pop("out", None)
    if not out:
        raise UserError("--out FILE is required (the teacher checkpoint to write)")
    if options.get("pretrained"):
        _pretrained_teacher(args, options, out)
        return
    if options.get("weights"):
        raise UserError("--weights FILE goes with --pretrained MODEL (the weights to write as a teacher)")
    if not options.get("dataset"):
        raise UserError("--dataset is required (see `infer-fast datasets`)")
    config = TeacherConfig(**options)  # (checked when made: train_teacher takes it as it is)
    args.checkpoint = out  # (an interrupted training continues from it: _how_to_continue)
    with output_lock(out, "teacher checkpoint"):  # (two trainings of one --out would overwrite each other)
        summary = train_teacher(config, out, progress=not args.quiet)
    print(
        f"teacher {summary['model']} on {summary['dataset']}: test accuracy {summary['test_accuracy']:.4f} "
        f"after {count_text(summary['epochs_done'], 'epoch')} ({summary['elapsed_s']:.0f} s of training) -> {out}"
    )


def _pretrained_teacher(args: argparse.Namespace, options: Dict, out: str) -> None:
    """`teacher --pretrained MODEL`: the model's pretrained ImageNet weights (torch hub cache,
    or --weights FILE) written as a teacher checkpoint, as `infer-fast run` writes them."""
    from .models.external import is_external
    from .teacher import TeacherConfig, pretrained_teacher

    given = [name for name in options_of(TeacherConfig) if name != "dataset" and name in options]
    if given:
        raise UserError(f"--pretrained writes pretrained weights as they are, without training: "
                        f"{_as_given(args, given, teacher_options())} (leave "
                        f"{'it' if len(given) == 1 else 'them'} out, or train with --model instead)")
    model, dataset = options["pretrained"], options.get("dataset") or "imagenet"
    if options.get("weights") and is_external(model):
        raise UserError(f"--weights FILE applies to the built-in models; {model} reads its library's cache")
    source = options.get("weights") or True  # a missing file is named before the weights are read
    kept = os.path.exists(out)  # (then pretrained_teacher says what the file holds: one line, not two)
    meta = pretrained_teacher(model, dataset, out, pretrained=source)
    if kept:
        return
    weights = "the torch hub cache" if meta["config"]["pretrained"] is True else meta["config"]["pretrained"]
    print(f"teacher {meta['model']} for {meta['dataset']}: pretrained weights from {weights} (accuracy not measured) -> {out}")


def cmd_inspect(args: argparse.Namespace) -> None:
    from .storage import inspect_report, write_preview

    if args.preview is not None:
        _check_preview_path(args.directory, args.preview)
    print(inspect_report(args.directory))
    if args.preview:  # only where asked: the set itself may be on read-only media
        write_preview(args.directory, args.preview)
        print(f"preview: {args.preview}")


def _check_preview_path(directory: str, preview: str) -> None:
    """--preview is a PNG file outside the set: inside it, it would replace or add to the set's
    own files (`inspect` only reads the set)."""
    if not preview.lower().endswith(".png"):
        raise UserError(f"--preview takes a .png file to write, got {preview!r}")
    inside = os.path.realpath(os.path.dirname(os.path.abspath(preview)))
    if os.path.commonpath([inside, os.path.realpath(directory)]) == os.path.realpath(directory):
        raise UserError(f"--preview {preview!r} is inside the set {directory!r}: write the preview elsewhere "
                        "(inspect only reads the set)")


def cmd_import(args: argparse.Namespace) -> None:
    from .distill.run import check_new_output
    from .output_lock import output_lock
    from .storage import import_imagefolder, inspect_report, save_distilled
    from .storage.report import EXPORT_LISTING

    _one_process("import", "one pass over the folder's files")
    check_int("--image-size", args.image_size, none=f"the dataset's, or the size {EXPORT_LISTING} records")
    check_int("--num-classes", args.num_classes, none="the dataset's, an image folder's class folders, or the count "
                                                       f"{EXPORT_LISTING} records")
    given = {k: v for k, v in (("image_size", args.image_size), ("num_classes", args.num_classes)) if v is not None}
    if given:
        from .data.registry import get_dataset

        entry = get_dataset(args.dataset)
        if entry.layout != "folders" and args.image_size is not None:
            raise UserError(f"--image-size: dataset {entry.name!r} has one size ({entry.spec.image_size} px); "
                            "only a folder dataset (ImageNet, Tiny-ImageNet, imagefolder) is read at another")
        if entry.layout != "folders":  # (--num-classes given)
            raise UserError(f"--num-classes: dataset {entry.name!r} has {entry.spec.num_classes} classes; only a "
                            "folder dataset (ImageNet, Tiny-ImageNet, imagefolder) has class subsets")
    dataset = {"name": args.dataset, **given} if given else args.dataset
    with output_lock(args.out, "output directory"):  # (two imports to one --out: the second is refused)
        check_new_output(args.out)  # (before the folder is read: as every command that writes a set)
        ds = import_imagefolder(args.folder, dataset, soft_labels=args.soft_labels, name=args.name)
        save_distilled(ds, args.out)
    print(inspect_report(args.out, verify_checksums=False))


def cmd_export(args: argparse.Namespace) -> None:
    from .storage import export_imagefolder

    _one_process("export", "one pass over the set's files")
    count = export_imagefolder(args.directory, args.out, naming=args.naming)
    print(f"exported {count} images to {args.out}")


def cmd_distill(args: argparse.Namespace) -> None:
    from .config import merge
    from .distributed import init_from_env
    from .methods import DistillRequest, get_method
    from .methods.distill_options import COMMON_DISTILL_OPTIONS, TEACHER_USE_OPTIONS, distill_options

    declared = distill_options()
    options = merge(args, args.config, declared, declared)
    rank, _ = init_from_env()  # under torchrun: the recovery's jobs are split across the ranks
    for required in ("dataset", "ipc", "out"):
        if options.get(required) is None:
            raise UserError(f"--{required.replace('_', '-')} is required")
    method = get_method(options.get("method", declared["method"].default))  # (one that makes a set: the flag's choices)
    if method.resumable:  # (an interrupted run continues from its checkpoint: _how_to_continue)
        from .distill.run import recovery_checkpoint_path

        args.checkpoint = recovery_checkpoint_path(options["out"])
    if args.ipc is not None:  # (named as typed: the request's own check says ipc)
        check_int("--ipc", args.ipc)
    takes = COMMON_DISTILL_OPTIONS + (TEACHER_USE_OPTIONS if method.uses_teachers else ()) + method.option_names
    ignored = [k for k in options if k not in takes] + (["resume"] if args.resume and not method.resumable else [])
    if ignored:  # (silently ignored once: a user would think they took effect)
        raise UserError(f"{_as_given(args, ignored, declared)} to --method {method.name} ({method.summary})")
    teachers = path_list(options.get("teachers"))
    if method.uses_teachers and not teachers:
        raise UserError(f"--teachers T1.pt[,T2.pt...] is required for --method {method.name}")
    given = {k: options[k] for k in ("seed", "data_root", "device") if k in options}  # (else the request's defaults)
    request = DistillRequest(  # (checked when made: every option, before any data is read)
        method=method.name, dataset=options["dataset"], ipc=options["ipc"], out_dir=options["out"],
        teacher_paths=teachers, options={k: options[k] for k in method.option_names if k in options},
        resume=args.resume, progress=not args.quiet and rank == 0, **given)
    if rank != 0 and not method.all_ranks:
        return  # nothing to split: rank 0 makes the set
    from .storage import inspect_report

    path = request.make_set()

    if rank == 0:  # (the set was hashed as it was written: not read back twice)
        print(inspect_report(path, verify_checksums=False))


def cmd_relabel(args: argparse.Namespace) -> None:
    from .relabel import relabel_directory

    _one_process("relabel", "one pass of the teachers over the set; `infer-fast run` relabels on rank 0")
    teachers = comma_list(args.teachers)
    if not teachers:
        raise UserError("--teachers T1.pt[,T2.pt...] is required")
    _check_device("--device", args.device)
    ds = relabel_directory(args.directory, teachers, device=args.device, progress=not args.quiet)
    print(f"relabelled {ds.num_training_images()} training images of {args.directory} with {len(teachers)} teacher(s)")


def cmd_train(args: argparse.Namespace) -> None:
    from .data import load_test_split
    from .storage import load_distilled
    from .methods.registry import set_student_settings
    from ._io import save_json_atomic
    from .output_lock import job_output_lock
    from .student import (TRAIN_REPORT_FORMAT, StudentConfig, best_accuracy_over_seeds, check_patches_fit,
                          evaluate_seeds, labels_text, recipe_of, train_report)
    from .teacher import load_teachers_for_set
    from .distributed import init_from_env, same_outcome

    rank, _ = init_from_env()  # under torchrun: DistributedDataParallel students
    with same_outcome():  # (a rank's refusal, of its options or of a file on its node, stops every rank)
        declared = options_of(StudentConfig)
        fields = {k: getattr(args, k) for k, o in declared.items() if o.flag_name and getattr(args, k) is not None}
        # the options given, checked before any loading: each field and the combinations StudentConfig.validate
        # checks (model, device, dynamic with hard labels), which no recipe sets; the config with the set's recipe
        # (known once the set is read) is made below
        StudentConfig(**fields)
        check_int("--seeds", args.seeds)
        _check_resume_has_checkpoints(args)
        if args.out and rank == 0:  # (rank 0 writes it)
            _check_report_out(args.out, [("--teachers", path) for path in comma_list(args.teachers)],
                              TRAIN_REPORT_FORMAT, "training report")
        if args.teachers and not fields.get("dynamic", declared["dynamic"].default):
            raise UserError("--teachers applies with --dynamic (INFER+Dyn: labels recomputed by the teachers) only; "
                            "a set's static soft labels come from `infer-fast relabel`")
        ds = load_distilled(args.directory)
        # the recipe of the set's dataset's family (ImageNet: the SRe2L protocol) unless --recipe, with what
        # the set's method gives its students (RDED: its augmentation) under the options given
        config = StudentConfig.from_recipe(args.recipe or recipe_of(ds.real_dataset), **{**set_student_settings(ds), **fields})
        config.check_given(list(fields))
        check_patches_fit(config, ds.image_size, "--patches")
        _check_decode_cache(args.decode_cache, ds.real_dataset)
        teachers = load_teachers_for_set(comma_list(args.teachers), ds, device=config.device)  # (before the test split is read)
        if config.dynamic and not teachers:
            raise UserError("--dynamic (INFER+Dyn) needs --teachers")
    _check_train_ranks_agree(ds, config, teachers, args)
    with same_outcome():  # (a node without the test split)
        test = load_test_split(ds.real_dataset, data_root=args.data_root, decode_cache=args.decode_cache,
                               progress=not args.quiet and rank == 0)
    seeds = range(args.seeds)  # (a range: a count is checked, never a list of that many made)
    # (two trainings writing one --out: the second is refused at its start, not one report lost at the end;
    # held by rank 0 for every rank: a refusal stops them all, none left waiting in a collective)
    with job_output_lock(args.out, "training report") if args.out else contextlib.nullcontext():
        result = evaluate_seeds(ds, test, config, seeds=seeds, teachers=teachers or None,
                                progress=not args.quiet and rank == 0, checkpoints=args.checkpoints, resume=args.resume)
        if args.out and rank == 0:
            save_json_atomic(train_report(ds, args.directory, config, result, comma_list(args.teachers)), args.out)
    if rank != 0:
        return
    per_seed = ", ".join(f"{acc:.4f}" for acc in result["per_seed"].values())
    # (what a cross-architecture table needs in one line: the student, its labels, the numbers)
    line = (f"student {config.model} ({labels_text(config)}) on {args.directory} ({ds.method}, "
            f"{ds.num_training_images()} training images), {count_text(config.epochs, 'epoch')}: final top-1 on the "
            f"real {ds.dataset} test split {100 * result['mean']:.2f} +- {100 * result['std']:.2f} % over "
            f"{len(seeds)} seed(s) [{per_seed}]")
    best = best_accuracy_over_seeds(result)
    if best:  # (--eval-every: the optimistic number, labelled, beside the final one)
        line += f"; {best['label']}: {100 * best['mean']:.2f} +- {100 * best['std']:.2f} %"
    print(line)
    if args.out:
        print(f"report: {args.out}")


def _check_train_ranks_agree(ds, config, teachers, args: argparse.Namespace) -> None:
    """Under torchrun, before any training: every rank trains the same students (the student
    settings but the result-neutral ones, STUDENT_RESULT_NEUTRAL; the seeds, resuming or not) on
    the same set and teachers (their contents), else the ranks' shares of every batch came from
    other runs and rank 0's line reported them as its own. ValueError on every rank naming the
    first rank and setting that differ."""
    from ._io import model_digest
    from .distributed import check_ranks_agree, rank_and_world
    from .options import result_settings
    from .student import StudentConfig, set_digest

    if rank_and_world()[1] == 1:
        return  # (no digests to compute)
    mine = {**json.loads(json.dumps(result_settings(config), default=str)), "seeds": args.seeds, "resume": args.resume,
            "set_sha256": set_digest(ds), "teachers_sha256": [model_digest(t) for t in teachers]}
    flags = {name: o.flag_name for name, o in options_of(StudentConfig).items() if o.flag_name}
    check_ranks_agree(mine, "every rank must run the same command on the same files",
                      digests={"set_sha256": "distilled set's images or labels", "teachers_sha256": "teachers' weights"},
                      labels={**flags, "seeds": "--seeds", "resume": "--resume"})


# the StudentConfig fields evaluate takes (the protocol sets the others: labels, seeds...)
EVALUATE_STUDENT_OPTIONS = ("model", "epochs", "batch_size", "lr", "temperature", "augmentation", "mix")
# the settings both protocols declare with the same meaning and default (evaluate's flags for them)
SHARED_PROTOCOL_OPTIONS = ("random_subset_seed", "weight", "full_data_epochs")


def _evaluation_protocol(args: argparse.Namespace, dataset=None, method: Optional[str] = None):
    """The protocol the evaluate options ask for, validated (before any loading; with the set's
    ``dataset``: its family's student recipe unless --recipe, DD-Ranking's checked against it;
    with its ``method``: under ours, the labels its students take unless --soft-labels, per
    batch for RDED's, as `run` trains them)."""
    from .evaluate import COMPUTE_FIELDS, make_protocol
    from .methods.registry import find_method

    if args.seeds is not None:  # (named as typed: the protocols call it seeds or rounds)
        check_int("--seeds", args.seeds)
    student = {k: getattr(args, k) for k in (*EVALUATE_STUDENT_OPTIONS, *COMPUTE_FIELDS)
               if getattr(args, k) is not None}
    options = {k: getattr(args, k) for k in ("soft_labels", *SHARED_PROTOCOL_OPTIONS) if getattr(args, k) is not None}
    own = find_method(method) if method is not None else None  # (an imported set's: none)
    if args.protocol != "dd-ranking" and "soft_labels" not in options and own is not None \
            and own.student_labels == "per-batch":
        options["soft_labels"] = "per-batch"
    if args.full_data_checkpoint and args.full_data_epochs is not None:  # (the run is read, not trained)
        raise UserError("--full-data-epochs sets the full-data run trained here: it does not apply with "
                        "--full-data-checkpoint")
    if args.protocol == "dd-ranking":
        if args.recipe is not None:
            raise UserError("--recipe applies to --protocol infer-fast; DD-Ranking's recipe follows the dataset")
        if args.lr is not None:  # (the protocol's own refusal names its Python field, student's lr)
            raise UserError("--lr does not apply to --protocol dd-ranking: it searches --lr-grid (--set-lr for the "
                            "set's soft-label runs)")
        _check_test_interval(args, dataset)
        options.update({k: getattr(args, k) for k in ("set_lr", "test_interval") if getattr(args, k) is not None},
                       **({"lr_grid": tuple(positive_floats("--lr-grid", args.lr_grid))} if args.lr_grid is not None else {}))
    else:
        for option, value in (("--lr-grid", args.lr_grid), ("--set-lr", args.set_lr),
                              ("--test-interval", args.test_interval)):
            if value is not None:  # (ignored silently, a user would think it took effect)
                raise UserError(f"{option} applies to --protocol dd-ranking only")
        if args.recipe is not None:
            options["recipe"] = args.recipe
    return make_protocol(args.protocol, student, args.seeds, dataset, **options)


def _check_test_interval(args: argparse.Namespace, dataset=None) -> None:
    """dd-ranking's students train at least --test-interval epochs (its accuracy is the best
    of those tests), said with the flags (the protocol's own check names its fields)."""
    from .data.registry import recipe_family
    from .dd_ranking import FAMILY_RECIPES, TEST_INTERVAL

    interval = args.test_interval if args.test_interval is not None else TEST_INTERVAL
    interval_text = f"--test-interval ({interval}{'' if args.test_interval is not None else ', its default'})"
    why = "the protocol's accuracy is the best of the tests every --test-interval epochs"
    if args.epochs is not None and args.epochs < interval:
        raise UserError(f"--epochs ({args.epochs}) must be at least {interval_text}: {why}")
    family = recipe_family(dataset if dataset is not None else "cifar10")  # (the protocol checks CIFAR's until the set is read)
    epochs = FAMILY_RECIPES[family]["epochs"]
    if args.epochs is None and epochs < interval:
        raise UserError(f"{interval_text} must be at most the students' epochs ({epochs}, the {family} recipe's; "
                        f"--epochs sets them): {why}")


def _check_resume_has_checkpoints(args: argparse.Namespace) -> None:
    """train's and evaluate's --resume continues what their --checkpoints DIR holds."""
    if args.resume and not args.checkpoints:
        raise UserError(f"--resume continues from --checkpoints DIR: give the folder the interrupted {args.command} wrote")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from ._io import check_writable, save_json_atomic
    from ._text import checkpoints_held
    from .evaluate import REPORT_FORMAT, checkpoint_files, evaluate_under, format_report
    from .output_lock import output_lock
    from .storage import load_distilled
    from .teacher import load_teachers_for_set

    _one_process("evaluate", "`infer-fast train` trains one student across the ranks; `infer-fast run` scores its sets")
    teachers = comma_list(args.teachers)
    if not teachers:
        raise UserError("--teachers T1.pt[,T2.pt...] is required (they label the random subsets)")
    _check_resume_has_checkpoints(args)
    if args.checkpoints:  # (as train's: what a folder holds is continued only when asked)
        check_writable(args.checkpoints, "--checkpoints", kind="inside")
        found = [os.path.basename(path) for path in checkpoint_files(args.checkpoints)]
        if found and not args.resume:
            raise UserError(checkpoints_held(f"--checkpoints {args.checkpoints}", found))
    if args.out:
        inputs = [("--teachers", path) for path in teachers]
        if args.full_data_checkpoint:
            inputs.append(("--full-data-checkpoint", args.full_data_checkpoint))
        _check_report_out(args.out, inputs, REPORT_FORMAT, "evaluation report")
    _evaluation_protocol(args)  # (every option checked before any loading)
    # two evaluations writing one --out: the second is refused at its start, not one report lost at the end
    with output_lock(args.out, "evaluation report") if args.out else contextlib.nullcontext():
        ds = load_distilled(args.directory)
        _check_decode_cache(args.decode_cache, ds.real_dataset)
        protocol = _evaluation_protocol(args, ds.real_dataset, ds.method)
        models = load_teachers_for_set(teachers, ds, device=args.device)
        _check_full_data_checkpoint(args, protocol, ds)
        report = evaluate_under(protocol, ds, models, data_root=args.data_root,
                                full_data_checkpoint=args.full_data_checkpoint, device=args.device,
                                progress=not args.quiet, decode_cache=args.decode_cache, checkpoints=args.checkpoints)
        report["set"]["path"] = args.directory
        print(format_report(report))
        if args.out:
            save_json_atomic(report, args.out)
            print(f"report: {args.out}")


def _check_full_data_checkpoint(args: argparse.Namespace, protocol, ds) -> None:
    """--full-data-checkpoint checked before the evaluation, its errors naming the flags (the
    evaluation's own check names its Python arguments); not where DD-Ranking's cached value is
    taken instead (the checkpoint is not read)."""
    from .dd_ranking import DDRankingProtocol, cached_full_data
    from .evaluate import check_full_data_checkpoint

    if args.full_data_checkpoint is None:
        return
    model = protocol.student_model(ds.real_dataset)
    if isinstance(protocol, DDRankingProtocol) and cached_full_data(ds, model) is not None:
        return
    check_full_data_checkpoint(args.full_data_checkpoint, model, ds.real_dataset, ds.class_names,
                               label="--full-data-checkpoint", model_flag="--model")


def _check_report_out(out: str, inputs: List[Tuple[str, str]], report_format: str, what: str) -> None:
    """Before any work: evaluate's and train's --out replace the file, so it may be neither one
    of the command's ``inputs`` ((flag, path)) nor an existing file other than a report of
    ``report_format`` (``what``: "evaluation report"), not a teacher checkpoint, a run's
    results.json or a set's manifest."""
    from ._io import check_writable

    check_writable(out, "--out")
    for flag, path in inputs:
        if os.path.realpath(out) == os.path.realpath(path):
            raise UserError(f"--out {out!r} is the file given as {flag}: the report would replace it; give another --out")
    if not os.path.exists(out):
        return
    try:
        with open(out, "rb") as f:
            starts_as_object = f.read(1) == b"{"  # (a report is a JSON object: a checkpoint is not read whole)
            f.seek(0)
            report = json.load(f) if starts_as_object else None
    except (OSError, ValueError):  # (unreadable, or not JSON: not a report)
        report = None
    if not isinstance(report, dict) or report.get("format") != report_format:
        raise UserError(f"--out {out!r} exists and is not an infer-fast {what}: the report would replace "
                        "it; give another --out, or remove the file first")


def _check_decode_cache(decode_cache: Optional[str], dataset) -> None:
    """--decode-cache given for a dataset held as arrays (Fashion-MNIST, CIFAR) would be unused."""
    from .data.registry import get_dataset

    entry = get_dataset(dataset)
    if decode_cache is not None and entry.layout == "arrays":
        raise UserError(f"--decode-cache applies to datasets read from image files (folders); "
                        f"{entry.name} is read from arrays: leave it out")


DECODE_CACHE_HELP = ("decode the real test split once into DIR and read it from there (image-folder datasets such "
                     "as ImageNet, which every evaluation would decode again)")


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse's parser (and its command parsers), with a usage error in one line like every
    other error of the CLI: argparse's usage block is what --help shows."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def _check_value(self, action, value):
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as exc:  # (a method of a plug-in not loaded: say how to load it)
            if action.dest != "method":
                raise
            from .methods.registry import PLUGINS_HINT

            raise argparse.ArgumentError(action, f"{exc.message}; {PLUGINS_HINT}") from None


class _Commands(argparse._SubParsersAction):
    """The commands' action: a word its command does not know is refused by that command
    (argparse leaves it to the top parser: "infer-fast: error: ..., see `infer-fast --help`",
    whose help does not list the command's flags)."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        extras = getattr(namespace, argparse._UNRECOGNIZED_ARGS_ATTR, None)  # (only the command's words, so far)
        if extras:
            self.choices[values[0]].error(f"unrecognized arguments: {' '.join(extras)}")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(
        prog="infer-fast", description="Kernel-accelerated INFER dataset distillation toolkit."
    )
    parser.register("action", "parsers", _Commands)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add_commands in (_add_listing_commands, _add_demo_and_run, _add_teacher, _add_distill, _add_relabel_and_train,
                         _add_evaluate, _add_set_commands):
        add_commands(sub)
    parser.add_argument("-V", "--version", action="version", version=f"infer-fast {__version__}")
    debug_help = "on an error, show the traceback instead of one line"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    for command in sub.choices.values():  # also after the command: `infer-fast distill ... --debug`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


def _add_listing_commands(sub) -> None:
    info = sub.add_parser("info", help="versions and the kernel backends built and usable here")
    info.add_argument("--check", action="store_true",
                      help="only check that a visible CUDA GPU has the CUDA kernels (built, loaded, registered): "
                           "one line, exit status 1 when not")
    info.set_defaults(func=cmd_info)
    models = sub.add_parser("models", help="list the model names create_model() accepts")
    models.set_defaults(func=cmd_models)
    datasets = sub.add_parser("datasets", help="list the registered datasets")
    datasets.set_defaults(func=cmd_datasets)


def _add_demo_and_run(sub) -> None:
    from .methods import run_method_names
    from .results import RESULTS_FILE, RUN_REPORT

    demo = sub.add_parser(
        "demo", help="the main job in miniature: teachers, INFER vs random vs SRe2L at ipc 10, students, a table "
        "(embedded Fashion-MNIST subset, a few minutes on a CPU)",
    )
    demo.add_argument("--out", default="demo-output", help="run directory (default demo-output/; an existing one is continued)")
    demo.add_argument("--seeds", type=int, help="students per method (default: the demo's)")
    demo.add_argument("--iterations", type=int, help="recovery iterations (default: the demo's)")
    demo.add_argument("--epochs", type=int, help="student epochs (default: the demo's)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser(
        "run", help="the whole chain from a YAML config: teachers, distill, relabel, students, results table",
        description="Runs (or continues) an experiment: a YAML file, or a preset shipped with infer-fast by its name "
        f"(configs/*.yaml). Results go to OUT/{RESULTS_FILE} and OUT/{RUN_REPORT}.",
    )
    run.add_argument("config", help="YAML experiment config: a file, or a preset's name (an existing file wins): "
                     + ", ".join(preset_names("run")))
    run.add_argument("--out", help="run directory (overrides the config's out)")
    run.add_argument("--teachers", help="comma-separated trained teacher checkpoints to use instead of training the config's")
    run.add_argument("--ipc", help="comma-separated ipc values (overrides the config's)")
    run.add_argument("--methods", help=f"comma-separated methods among {', '.join(run_method_names())}")
    run.add_argument("--seeds", type=int, help="students per (method, ipc)")
    run.add_argument("--device", help=DEVICE_CHOICES)
    run.add_argument("--data-root", dest="data_root", help="directory holding the dataset files")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=cmd_run)


def _add_teacher(sub) -> None:
    teacher = sub.add_parser(
        "teacher",
        help="train a teacher on a real training set (checkpoints every epoch, resumes), or write a pretrained "
        "model's cached weights as one (--pretrained)",
        description="Train a teacher (SGD, cosine, crop+flip). Options from --config YAML are "
        "overridden by those given here. Running again with the same --out resumes an interrupted run. "
        "--pretrained MODEL instead writes MODEL's pretrained weights (ImageNet's from the local torch hub cache, or "
        "--weights FILE, e.g. a CIFAR teacher of the INFER release; never downloaded; `infer-fast models` lists the "
        "files) as a teacher checkpoint for distill, relabel, train and run, without training.",
    )
    teacher.add_argument("--config", help="YAML file of options, or a preset's name (an existing file wins): "
                         + ", ".join(preset_names("teacher")))
    add_flags(teacher, teacher_options().values())
    teacher.add_argument("--quiet", action="store_true", help="no progress bars")
    teacher.set_defaults(func=cmd_teacher)


def _add_distill(sub) -> None:
    from .data.registry import DATASET_FAMILIES, SMALL_IMAGE_MAX
    from .distill.config import RECIPES
    from .methods import all_methods
    from .methods.distill_options import (COMMON_DISTILL_OPTIONS, DISTILL_SWITCHES, distill_method_options,
                                          distill_request_options)

    makers = [m for m in all_methods() if m.distill is not None]
    relabelled = [m.name for m in makers if m.student_labels == "static"]
    distill = sub.add_parser(
        "distill", help=f"distill a dataset into a distilled-set directory ({', '.join(m.name for m in makers)})",
        description="Methods: " + "; ".join(f"{m.name}: {m.summary}" for m in makers) + ". INFER: K = "
        "floor(ipc*C/(C+M)) natural sets ('fair' accounting), one UFC per set and teacher. The recovery methods "
        "checkpoint after each batch and every --checkpoint-minutes inside one, RDED after a class (--resume "
        f"continues). Each method's recipe follows the dataset's family ({', '.join(DATASET_FAMILIES)}; images "
        f"over {SMALL_IMAGE_MAX} px are of the imagenet family); the options given override it. The sets of "
        + ", ".join(relabelled) + " are unlabelled: run `infer-fast relabel`.",
    )
    for flag, how in DISTILL_SWITCHES.items():
        distill.add_argument(flag, **how)
    by_methods: Dict[Tuple[str, ...], List[Option]] = {}
    common = list(distill_request_options().values())
    # an option several methods take (one flag), each with its own defaults (its declaration's and its recipes'
    # per dataset family): the help quotes the first's (its declaration, the recovery recipes) and each other's
    # that differ from them
    defaults = {m.name: m.family_option_defaults() for m in makers}
    others: Dict[str, Dict[str, object]] = {}
    for name, (opt, takers) in distill_method_options().items():  # each method's own (Method.options)
        (common if name in COMMON_DISTILL_OPTIONS else by_methods.setdefault(takers, [])).append(opt)
        first = [values[name] for values in defaults[takers[0]].values()]
        for taker in takers[1:]:
            theirs = {family: values[name] for family, values in defaults[taker].items()}
            if list(theirs.values()) != first:
                value, exceptions = _by_family(opt, theirs)
                others.setdefault(name, {})[f"for --method {taker}{exceptions}"] = value
    add_flags(distill, common, recipes=RECIPES, others=others)
    for takers, opts in by_methods.items():  # a help section per set of methods taking them
        add_flags(distill.add_argument_group(f"options of --method {', '.join(takers)}"), opts, recipes=RECIPES,
                  others=others)
    distill.set_defaults(func=cmd_distill)


def _by_family(opt: Option, values: Dict[str, object]) -> Tuple[object, str]:
    """A method's defaults of ``opt`` by dataset family as a help says them: the value most
    families get, and " (V for the F family, ...)" for the others ("" where there are none)."""
    from .options import value_text

    listed = list(values.values())
    most = max(listed, key=listed.count)
    exceptions = [f"{value_text(opt, value)} for the {family} family" for family, value in values.items()
                  if value != most]
    return most, f" ({', '.join(exceptions)})" if exceptions else ""


def _add_relabel_and_train(sub) -> None:
    from .data.registry import SMALL_IMAGE_MAX
    from .student import RECIPES, StudentConfig

    relabel = sub.add_parser("relabel", help="static soft labels: the mean of the teachers' logits on every training image")
    relabel.add_argument("directory", help="distilled-set directory (rewritten in place)")
    relabel.add_argument("--teachers", required=True, help="comma-separated teacher checkpoints")
    relabel.add_argument("--device", default="cpu", help=f"{DEVICE_CHOICES} (default cpu)")
    relabel.add_argument("--quiet", action="store_true", help="no progress bar")
    relabel.set_defaults(func=cmd_relabel)

    train = sub.add_parser("train", help="train students on a distilled set and evaluate them on the real test split")
    train.add_argument("directory", help="distilled-set directory (relabelled, unless --dynamic)")
    train.add_argument("--recipe", choices=tuple(RECIPES),
                       help="the student recipe: cifar (the defaults below) or imagenet (the SRe2L protocol: the values "
                       "below say where it differs); the options below override it (default: the set's dataset's "
                       f"family's: imagenet for ImageNet and images over {SMALL_IMAGE_MAX} px, cifar for the others)")
    add_flags(train, options_of(StudentConfig).values(), recipes=RECIPES, others=_set_student_defaults())
    train.add_argument("--seeds", type=int, default=1, help="number of seeds (0..n-1); reports mean +- std (default 1)")
    train.add_argument("--teachers", help="comma-separated teacher checkpoints (for --dynamic)")
    train.add_argument("--data-root", dest="data_root", help="directory holding the real dataset (test split)")
    train.add_argument("--decode-cache", dest="decode_cache", metavar="DIR", help=DECODE_CACHE_HELP)
    train.add_argument("--checkpoints", metavar="DIR",
                       help="a folder for each seed's student checkpoint (seed<N>.pt, written after every epoch: the "
                       "trained students' weights too); an interrupted train continues from them with --resume")
    train.add_argument("--resume", action="store_true", help="with --checkpoints: continue the seeds from their "
                       "checkpoints (a finished seed is read back, not trained again)")
    train.add_argument("--out", metavar="FILE", help="write the results (JSON) here: the set, the students' settings, "
                       "the accuracy over the seeds and each seed's epochs")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_train)


def _add_evaluate(sub) -> None:
    from .dd_ranking import SET_BY_PROTOCOL, DDRankingProtocol
    from .evaluate import COMPUTE_FIELDS, Protocol
    from .student import RECIPES, StudentConfig

    evaluate = sub.add_parser(
        "evaluate", help="a set under one protocol: students with soft and hard labels, with and without augmentation, "
        "against a random subset of its budget and the full data; DD-Ranking's HLR, IOR, LRS and ARS",
        description="--protocol infer-fast (default): 8 students per seed (the set and a random real subset of its "
        "budget, soft and hard labels, with and without augmentation and mixing), final-epoch accuracy. --protocol "
        "dd-ranking: DD-Ranking's own (5 rounds, a rate grid, the best of tests every 20 epochs, teacher labels per "
        "batch), scores also as its code prints them. Prints a table; --out writes the report.",
    )
    evaluate.add_argument("--protocol", choices=EVALUATION_PROTOCOLS, default="infer-fast",
                          help="infer-fast (ours, default) or dd-ranking (its protocol point by point)")
    # the protocols' own settings, as the two protocol classes declare them (a flag left out: the protocol's default)
    ours, theirs = options_of(Protocol), options_of(DDRankingProtocol)
    own = ours["soft_labels"].default
    add_flags(evaluate, [ours["soft_labels"]], default=f"{own} under infer-fast{_set_label_defaults(own)}, "
              f"{theirs['soft_labels'].default} (DD-Ranking's M mode) under dd-ranking")
    add_flags(evaluate, [ours[name] for name in SHARED_PROTOCOL_OPTIONS])  # (the same default in both)
    evaluate.add_argument("--lr-grid", dest="lr_grid", help="dd-ranking: the learning rates searched, comma-separated "
                          f"(default {','.join(f'{lr:g}' for lr in theirs['lr_grid'].default)})")
    add_flags(evaluate, [dataclasses.replace(theirs[name], help="dd-ranking: " + theirs[name].help)
                         for name in ("set_lr", "test_interval")])
    evaluate.add_argument("directory", help="distilled-set directory, relabelled by --teachers")
    evaluate.add_argument("--teachers", required=True, help="comma-separated teacher checkpoints (label the random subsets)")
    evaluate.add_argument("--full-data-checkpoint", dest="full_data_checkpoint",
                          help="a teacher checkpoint whose recorded test accuracy is the full-data hard-label accuracy "
                          "(default: trained here with the teacher recipe and the student model)")
    evaluate.add_argument("--recipe", choices=tuple(RECIPES),
                          help="infer-fast: student recipe (see train; default: the set's dataset's family's)")
    student = options_of(StudentConfig)
    # (those DD-Ranking sets itself are refused under it: infer-fast's only)
    add_flags(evaluate, (dataclasses.replace(student[name], help="infer-fast: " + student[name].help)
                         if name in SET_BY_PROTOCOL else student[name] for name in EVALUATE_STUDENT_OPTIONS),
              default="the protocol's recipe", others=_set_student_defaults())
    add_flags(evaluate, (student[name] for name in COMPUTE_FIELDS))  # (StudentConfig's defaults)
    evaluate.add_argument("--seeds", type=int,
                          help="infer-fast: students per run (default 3); dd-ranking: rounds (default 5)")
    evaluate.add_argument("--data-root", dest="data_root", help="directory holding the real dataset")
    evaluate.add_argument("--decode-cache", dest="decode_cache", metavar="DIR", help=DECODE_CACHE_HELP)
    evaluate.add_argument("--device", default="auto", help=f"{DEVICE_CHOICES} (default auto)")
    evaluate.add_argument("--out", help="write the report (JSON) here")
    evaluate.add_argument("--checkpoints", metavar="DIR",
                          help="a folder for the checkpoints of the full-data run and of every student (written after "
                          "every epoch, kept after it: a later evaluation of other seeds reads those it shares back); an "
                          "interrupted evaluate continues from them with --resume (default: none, a stop loses them all)")
    evaluate.add_argument("--resume", action="store_true", help="with --checkpoints: continue the full-data run and "
                          "the students from their checkpoints (a finished one is read back, not trained again)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(func=cmd_evaluate)


def _set_student_defaults() -> Dict[str, Dict[str, str]]:
    """What the methods give their sets' students over the recipe (Method.student_settings), as
    add_flags's ``others``: {field: {"for an RDED set": what the help says}}."""
    from .methods import all_methods

    said: Dict[str, Dict[str, str]] = {}
    for method in all_methods():
        for name, text in method.student_settings_help.items():
            said.setdefault(name, {})[f"for a set of {method.label}"] = text
    return said


def _set_label_defaults(default: str) -> str:
    """", per-batch for a set of RDED": the label modes other than ``default`` that the methods
    making sets give their students (Method.student_labels: evaluate follows them)."""
    from .methods import all_methods

    return "".join(f", {m.student_labels} for a set of {m.label}" for m in all_methods()
                   if m.distill is not None and m.student_labels != default)


def _add_set_commands(sub) -> None:
    from .storage.report import EXPORT_LISTING, EXPORTED_SOFT_LABELS

    inspect = sub.add_parser("inspect", help="summarize a distilled set (compression ratio, checksums); --preview "
                             "PATH also draws it as a PNG")
    inspect.add_argument("directory", help="distilled-set directory")
    inspect.add_argument("--preview", metavar="PATH", help="write a PNG preview grid to PATH (nothing is written otherwise)")
    inspect.set_defaults(func=cmd_inspect)

    importer = sub.add_parser(
        "import", help="another method's set (class folders of images, optional soft labels) as a distilled set",
        description="Reads ROOT/<class>/<image> (class folders named by class index or the dataset's class names, "
        "ImageNet's by wnid; an imagefolder set's classes are its class folders, sorted by name; images of the "
        f"dataset's size, or --image-size, or the size infer-fast's export recorded in ROOT/{EXPORT_LISTING}; not resized) "
        "into a set of method 'external' that evaluate, train, inspect and run treat like ours. Image order: by "
        "class, then file name (the rows of --soft-labels, logits); an infer-fast export's own "
        f"{EXPORTED_SOFT_LABELS} (its SHA-256 in {EXPORT_LISTING}), or the same values in another file, is read in the export's order (that file "
        "taken by default); soft labels whose rows may be in another order are refused unless a .safetensors file "
        "records row_order.",
    )
    importer.add_argument("folder", help="the set's root folder (one sub-folder per class)")
    importer.add_argument("--dataset", required=True, help="the dataset it was distilled from (see `infer-fast datasets`)")
    importer.add_argument("--out", required=True, help="distilled-set directory to write (must not exist)")
    importer.add_argument("--soft-labels", dest="soft_labels",
                          help="a (N, C) tensor of soft labels (logits): .safetensors (one tensor) or torch.save file")
    importer.add_argument("--name", help="the method that made it (recorded, e.g. RDED)")
    importer.add_argument("--image-size", dest="image_size", type=int, metavar="N",
                          help="the images' size in pixels, for a folder dataset read at another resolution "
                          f"(e.g. ImageNet at 64); default: the dataset's, or what {EXPORT_LISTING} records")
    importer.add_argument("--num-classes", dest="num_classes", type=int, metavar="N",
                          help="the class count of a class subset of a folder dataset (ImageNet-100: 100; class "
                          "folders named by index, or by wnid: sorted, as the loader takes them); default: the "
                          f"dataset's, an imagefolder's class folders, or what {EXPORT_LISTING} records")
    importer.set_defaults(func=cmd_import)

    export = sub.add_parser("export", help="export a distilled set as PNG class folders")
    export.add_argument("directory", help="distilled-set directory")
    export.add_argument("--to", choices=["imagefolder"], default="imagefolder", help="export format")
    export.add_argument("out", help="output directory (must not exist or be empty)")
    export.add_argument("--naming", choices=EXPORT_NAMINGS, default="index",
                        help="class folders: class indices (default) or class names as folder names (T-shirt_top)")
    export.set_defaults(func=cmd_export)


# How an interrupted command continues: from its checkpoint (cmd_teacher and cmd_distill set
# args.checkpoint), or by running again (run and demo continue their directory).
RESUME_FROM_CHECKPOINT = {"teacher": "run the same command to continue",
                          "distill": "run the same command with --resume to continue",
                          "train": "run the same command with --resume to continue",
                          "evaluate": "run the same command with --resume to continue"}
CONTINUE_BY_RUNNING_AGAIN = ("run", "demo")

# What lowers a command's memory, for its out-of-memory line (others: the generic advice).
MEMORY_OPTIONS = {
    "teacher": "--batch-size or --eval-batch-size",
    "distill": "--group-size or --chunk-size (recovery), or --batch-size (rded)",
    "train": "--batch-size or --eval-batch-size",
    "evaluate": "--batch-size",
    "run": "batch_size or eval_batch_size (teachers, student), or group_size or chunk_size (recovery) in the config",
}


class _GuardedStream:
    """sys.stdout or sys.stderr as a command sees it: a write or flush that fails (a closed
    pipe: `| head`; a full disk; EIO) drops the rest of that stream's output instead of
    stopping the work, which never depends on it. A failed stdout is said once on stderr
    (``who``: the command); the stream's file descriptor is pointed at /dev/null, so what
    its buffer still holds goes there, and Python's flush at exit cannot fail on it ("Exception
    ignored ...", status 120). Each line is flushed as it ends: a batch job's log (a file, where
    Python buffers stdout in blocks) shows each epoch's line when it is printed, in order with
    stderr's, and keeps it if the job is killed."""

    def __init__(self, stream, name: str, who: str):
        self.stream, self.name, self.who, self.failed = stream, name, who, False

    def write(self, text: str) -> int:
        if not self.failed:
            try:
                try:
                    written = self.stream.write(text)
                except UnicodeEncodeError:  # (a terminal of another encoding: "±" and "–" shown as "?")
                    encoding = getattr(self.stream, "encoding", None) or "ascii"
                    written = self.stream.write(text.encode(encoding, "replace").decode(encoding))
                if "\n" in text:
                    self.stream.flush()
                return written
            except OSError as exc:
                self._drop(exc)
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self.failed:
            try:
                self.stream.flush()
            except OSError as exc:
                self._drop(exc)

    def __getattr__(self, name: str):  # (isatty, fileno, encoding... of the stream)
        return getattr(self.stream, name)

    def _drop(self, exc: OSError) -> None:
        self.failed = True
        try:  # (a stream without a descriptor, as under pytest's capture: only dropped here)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        if self.name == "stdout":  # (a failed stderr has nowhere to say it)
            print(f"{self.who}: stdout: {exc.strerror or exc}: further output dropped", file=sys.stderr, flush=True)


# sys.stdout and sys.stderr are the process's, and threads may run commands at once: the
# commands guarding them now, and the streams the first of them found (_guarded_output).
_streams_lock = threading.Lock()
_guarding_commands = 0
_unguarded_streams: Tuple[object, object] = (None, None)


@contextlib.contextmanager
def _guarded_output(who: str):
    """sys.stdout and sys.stderr guarded (_GuardedStream) while the block runs, flushed through
    the guards at its end, then restored; yields the stdout guard (its ``who`` can be set).
    Another thread's command may have replaced a guard meanwhile: a stream is put back only
    where it is still this block's guard, and the last command to end puts back the streams
    the first one found (where a guard is still there)."""
    global _guarding_commands, _unguarded_streams
    with contextlib.ExitStack() as opened:
        with _streams_lock:
            saved = sys.stdout, sys.stderr
            if _guarding_commands == 0:
                _unguarded_streams = saved
            _guarding_commands += 1
            # (a stream closed at the start, `>&-` or `2>&-`, is None in Python: its output goes nowhere)
            out, err = (_GuardedStream(opened.enter_context(open(os.devnull, "w")) if stream is None else stream,
                                       name, who) for stream, name in zip(saved, ("stdout", "stderr")))
            sys.stdout, sys.stderr = out, err
        try:
            yield out
        finally:
            out.flush()
            err.flush()
            with _streams_lock:
                _guarding_commands -= 1
                last = _guarding_commands == 0
                sys.stdout = _stream_put_back(sys.stdout, out, saved[0], _unguarded_streams[0], last)
                sys.stderr = _stream_put_back(sys.stderr, err, saved[1], _unguarded_streams[1], last)


def _stream_put_back(now, guard: _GuardedStream, replaced, unguarded, last: bool):
    """What sys.stdout (or sys.stderr), ``now``, becomes as a command whose ``guard`` replaced
    ``replaced`` ends: ``replaced`` where the guard is still there; another thread's guard
    stays while commands run (``last``: none does now; then the streams they found)."""
    if last and isinstance(now, _GuardedStream):
        return unguarded
    return replaced if now is guard else now


def _working_directory_problem() -> Optional[str]:
    """Why the current directory cannot be used (it was deleted, or moved away), if it cannot:
    every relative path of a command is read from it."""
    try:
        os.getcwd()
    except OSError as exc:
        what = ("no longer exists (deleted?)" if isinstance(exc, FileNotFoundError)
                else f"cannot be read ({exc.strerror or exc})")
        return f"the current directory {what}: cd to an existing directory and run the command again"
    return None


def _who(command: Optional[str]) -> str:
    """How a command's last line names it ("infer-fast distill"); under torchrun with its rank
    ("infer-fast distill (rank 1 of 2)"): every rank prints its own line, the same one when all
    refuse alike, and one rank's own failure (its device's memory, a file on its node) is told
    apart."""
    from .distributed import launched_rank, launched_world_size

    who = "infer-fast" + (f" {command}" if command else "")
    world = launched_world_size()
    return f"{who} (rank {launched_rank()} of {world})" if world > 1 else who


def _launch_problem() -> Optional[str]:
    """Why torchrun's variables (WORLD_SIZE, RANK, LOCAL_RANK) cannot be read, if they cannot
    (``export WORLD_SIZE=abc``): said before anything names this process by its rank."""
    from .distributed import launched_local_rank, launched_rank

    try:
        launched_rank()
        launched_local_rank()
    except ValueError as exc:
        return str(exc)
    return None


def _last_line(line: str) -> None:
    """A command's last line (an error, an interrupt) on stderr in one write, flushed: under
    torchrun the ranks' lines share a terminal or log, and print's text and newline, written
    apart, let another rank's line run into this one."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _interrupted(args: Optional[argparse.Namespace], exc: KeyboardInterrupt) -> int:
    """The one line of an interrupted command: which signal, and how to continue where that
    applies; returns the exit status, 128 + the signal's number."""
    who = _who(args.command if args is not None else None)
    name = interrupts.signal_name(getattr(exc, "signum", signal.SIGINT))
    _last_line(f"{who}: interrupted ({name}){_how_to_continue(args)}")
    return interrupts.exit_status(exc)


def _how_to_continue(args: Optional[argparse.Namespace]) -> str:
    """"; progress is saved in FILE: ..." where the command's checkpoint is on disk, "; run the
    same command ..." for the commands that continue their directory, else nothing."""
    if args is None:
        return ""
    if args.command in CONTINUE_BY_RUNNING_AGAIN:
        return "; run the same command to continue where it stopped"
    checkpoint = getattr(args, "checkpoints" if args.command in ("train", "evaluate") else "checkpoint", None)
    if args.command not in RESUME_FROM_CHECKPOINT or checkpoint is None:
        return ""
    if args.command == "train":  # (a folder of the seeds' checkpoints)
        from .student import seed_checkpoint

        found = sorted(glob.glob(seed_checkpoint(glob.escape(checkpoint), "*")))
    elif args.command == "evaluate":  # (a folder of the students' and the full-data model's checkpoints)
        from .evaluate import checkpoint_files

        found = checkpoint_files(checkpoint)
    else:
        from .distill.checkpoints import recovery_checkpoints

        found = recovery_checkpoints(checkpoint)  # the file itself (a recovery under torchrun "jobs": the ranks' shares)
    if not found:
        return ""
    where = found[0] + (f" (and {len(found) - 1} more beside it)" if len(found) > 1 else "")
    return f"; progress is saved in {where}: {RESUME_FROM_CHECKPOINT[args.command]}"


def _out_of_memory(command: str, exc: BaseException) -> str:
    """The one-line message of a command that ran out of memory: what lowers it."""
    from .memory import first_line

    detail = type(exc).__name__ + (f": {first_line(exc)}" if first_line(exc) else "")
    lower = MEMORY_OPTIONS.get(command)
    fix = f"lower {lower}, or free memory" if lower else "free memory, or run it on a machine with more"
    return f"out of memory ({detail}): {fix}"


# how torch's DataLoader re-raises a worker's exception: its message is the worker's traceback
_WORKER_TRACEBACK = "\nOriginal Traceback (most recent call last):\n"


def _worker_message(exc: Exception) -> str:
    """``exc``'s message; for one a DataLoader worker raised (a file that does not decode), the
    worker's own message, the last line of the traceback torch puts in its place."""
    text = str(exc)
    if not text.startswith("Caught ") or _WORKER_TRACEBACK not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    prefix = f"{type(exc).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


def _failed(command: str, exc: Exception, user_errors: Tuple[type, ...]) -> int:
    """The one line of a failed command; returns its exit status: 2 for what the user or the
    machine can change (options, files, memory), 1 for a bug. (What it imports the parser has
    loaded: nothing new is loaded when memory has run out.)"""
    from ._io import describe_os_error
    from .memory import is_out_of_memory

    if isinstance(exc, user_errors):
        message = _worker_message(exc)
    elif _lost_peer(exc):  # (not a bug here: another rank stopped, with its own line)
        message = f"another rank stopped, so this one cannot go on (its own line says why): {first_line(exc, 160)}"
    elif isinstance(exc, OSError):  # missing inputs, read-only media, a full disk...: naming the path
        # (one naming no file: the current directory deleted under the run, if it was)
        message = (exc.filename is None and _working_directory_problem()) or describe_os_error(exc)
    elif is_out_of_memory(exc):  # (MemoryError under `ulimit -v`, CUDA's, the CPU allocator's)
        message = _out_of_memory(command, exc)
    else:  # a bug, not the user's doing: a short message, status 1
        plugin = _plugin_owner(exc)
        if plugin is not None:  # (a bug of a user's method, model or dataset: theirs to fix, not infer-fast's to be told)
            _last_line(f"{_who(command)}: error in {plugin[0]} (module {plugin[1]}): {type(exc).__name__}: "
                       f"{first_line(exc, 300)} (run again with --debug for the traceback)")
            return 1
        _last_line(f"{_who(command)}: internal error: {type(exc).__name__}: {first_line(exc, 300)} "
                   "(run again with --debug for the traceback, and please report it)")
        return 1
    _last_line(f"{_who(command)}: error: {message}")
    return 2


def _plugin_functions() -> Dict[object, str]:
    """The functions registered from outside infer-fast (a plug-in's, a user's): their code
    objects and their modules' names -> what they belong to ("method 'mine'", "model 'mynet'",
    "dataset 'mydata'"): a method's distill, parse_options..., a model's builder, a dataset's
    loader."""
    from .data.registry import get_dataset, list_datasets
    from .methods import all_methods
    from .models.registry import user_specs

    functions = [(f"method {method.name!r}", fn) for method in all_methods()
                 for fn in (method.distill, method.parse_options, method.check_budget, method.images_per_class,
                           method.student_settings)]
    for spec in user_specs():
        with contextlib.suppress(ImportError, AttributeError):  # (imported when registered; unless since removed)
            functions.append((f"model {spec.name!r}", spec.builder))
    functions += [(f"dataset {name!r}", get_dataset(name).loader) for name in list_datasets()]
    owners: Dict[object, str] = {}
    for owner, fn in functions:
        module = getattr(fn, "__module__", None) or ""
        if fn is not None and module.split(".")[0] != __package__:
            owners.setdefault(getattr(fn, "__code__", None), owner)
            owners.setdefault(module, owner)
    owners.pop(None, None)
    return owners


def _plugin_owner(exc: Exception) -> Optional[Tuple[str, str]]:
    """(what, module) of the plug-in code ``exc``'s traceback passes through (what: "method
    'mine'", "model 'mynet'", "dataset 'mydata'"): the innermost frame of one of their
    functions (a dataset's loader a plug-in method calls is to blame, not the method), or of
    their modules elsewhere (a helper: blamed on the function of its module that called it,
    where one did); None where none is passed (infer-fast's own error)."""
    owners = _plugin_functions()
    found: Optional[Tuple[str, str]] = None
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if tb.tb_frame.f_code in owners:
            found = (owners[tb.tb_frame.f_code], module)
        elif module in owners and (found is None or found[1] != module):
            found = (owners[module], module)
        tb = tb.tb_next
    return found


# what gloo and NCCL say when a collective's peer process has exited (the exception is a plain
# RuntimeError, or torch.distributed.DistBackendError)
LOST_PEER_MESSAGES = ("closed by peer", "reset by peer", "remote process exited", "remote worker crash")


def _lost_peer(exc: Exception) -> bool:
    """A collective failed because another rank of this torchrun launch exited."""
    from .distributed import launched_world_size

    if launched_world_size() <= 1:
        return False
    backend_error = getattr(sys.modules.get("torch.distributed"), "DistBackendError", None)
    return (backend_error is not None and isinstance(exc, backend_error)) or \
        (isinstance(exc, RuntimeError) and any(m in str(exc) for m in LOST_PEER_MESSAGES))


@contextlib.contextmanager
def _warnings_as_lines(who: str):
    """While the block runs, a warning shown on stderr is one line, "<who>: warning: <message>",
    not Python's file:line, category and source line (infer-fast's own, of no use to a user).
    Only the text changes: Python's filters still decide what is shown (each place once), and
    a caller recording warnings (warnings.catch_warnings(record=True)) still records them."""
    def one_line(message, category, filename, lineno, line=None) -> str:
        return f"{who}: warning: {message}\n"

    saved = warnings.formatwarning
    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = saved


# the commands torchrun runs on every rank, together: each joins the ranks' process group before
# its first checks, so that a rank refusing alone is heard by the others (distributed.same_outcome)
# instead of leaving them waiting for it to join
JOINS_THE_RANKS = ("run", "distill", "train")


def _run(args: argparse.Namespace) -> int:
    """The command, its errors as one line (_failed; --debug: the traceback)."""
    from .distill import RecoveryDivergedError
    from .distill.plan import RecoveryOutOfMemoryError
    from .distributed import init_from_env, same_outcome
    from .ops.backends import BackendUnavailableError, check_forced_backend
    from .progress import progress_mode

    user_errors = (UserError, ValueError, BackendUnavailableError, RecoveryDivergedError, RecoveryOutOfMemoryError)
    try:
        if args.command in JOINS_THE_RANKS:  # (a no-op without torchrun)
            init_from_env()
        with same_outcome():  # one rank's refusal stops every rank, each with its line (not a silent wait)
            progress_mode()  # a misspelt INFER_FAST_PROGRESS is refused before any work
            if args.command != "info":  # (info shows what the variable names, and why it cannot run)
                check_forced_backend()  # so is an INFER_FAST_BACKEND that cannot run here
        with _warnings_as_lines(_who(args.command)):
            args.func(args)
    except Exception as exc:
        if args.debug:
            raise
        return _failed(args.command, exc, user_errors)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """The command line. Every command ends with one line on stderr at most: an error, or an
    interrupt (SIGINT, SIGTERM, SIGHUP: interrupts.py; exit status 128 + the signal's number)
    saying how to continue, and returns the exit status (also for a usage error, --help or
    --version: a notebook's ``main([...])`` gets a status, not SystemExit). Output that cannot
    be written is dropped, not fatal (_GuardedStream)."""
    try:
        return _main(argv)
    except KeyboardInterrupt as exc:  # (Ctrl-C before the handlers are installed, or after they are removed)
        return _interrupted(None, exc)
    except SystemExit as exc:  # (argparse's usage errors, --help, --version: a status, as every other ending)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


def _main(argv: Optional[List[str]]) -> int:
    problem = _working_directory_problem() or _launch_problem()
    if problem:
        _last_line(f"infer-fast: error: {problem}")
        return 2
    with interrupts.handlers_installed(), _guarded_output(_who(None)) as stdout:
        args = None
        try:
            from .methods.registry import load_plugins

            try:  # (before the parser: their methods are --method choices, their options flags)
                load_plugins()
            except ValueError as exc:
                _last_line(f"{_who(None)}: error: {exc}")
                return 2
            args = build_parser().parse_args(argv)
            stdout.who = _who(args.command)
            return _run(args)
        except KeyboardInterrupt as exc:
            return _interrupted(args, exc)
        except MemoryError as exc:  # (the parser imports every command's modules: memory can run out there too)
            if args is not None:  # (--debug: the traceback)
                raise
            _last_line(f"{_who(None)}: error: {_out_of_memory('', exc)}")
            return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

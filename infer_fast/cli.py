"""The ``infer-fast`` command line. User errors print one line and exit non-zero."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Dict, List, Optional


class UserError(Exception):
    """An error the user can fix (bad option, missing file...): shown without a traceback."""


def cmd_info(args: argparse.Namespace) -> None:
    from .info import format_info

    print(format_info())


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(iterations=args.iterations, seed=args.seed, out_dir=args.out)


def cmd_models(args: argparse.Namespace) -> None:
    from .models import model_table

    rows = model_table()
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'inputs':<12} {'params (10 cl.)':>15}  description")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['inputs']:<12} {r['params']:>15,}  {r['description']}")
    print("\nAlso: torchvision:NAME and timm:NAME when those libraries are installed.")


def cmd_datasets(args: argparse.Namespace) -> None:
    from .data import get_spec, list_datasets

    for name in list_datasets():
        try:
            spec = get_spec(name)
        except ValueError:  # imagefolder: classes and size come from the folder
            print(f"{name:<18} classes and size from the folder")
            continue
        print(f"{name:<18} {spec.num_classes:>5} classes  {spec.channels}x{spec.image_size}x{spec.image_size}  {spec.description}")


TEACHER_OPTIONS = ("dataset", "model", "epochs", "batch_size", "lr", "momentum", "weight_decay", "seed", "data_root", "device", "out")


def cmd_teacher(args: argparse.Namespace) -> None:
    from .config import merge
    from .teacher import TeacherConfig, train_teacher

    options = merge(args, args.config, TEACHER_OPTIONS)
    out = options.pop("out", None)
    if not out:
        raise UserError("--out FILE is required (the teacher checkpoint to write)")
    if not options.get("dataset"):
        raise UserError("--dataset is required (see `infer-fast datasets`)")
    summary = train_teacher(TeacherConfig(**options), out, progress=not args.quiet)
    print(
        f"teacher {summary['model']} on {summary['dataset']}: test accuracy {summary['test_accuracy']:.4f} "
        f"after {summary['epochs_done']} epochs ({summary['elapsed_s']:.0f} s of training) -> {out}"
    )


def cmd_inspect(args: argparse.Namespace) -> None:
    from .storage import inspect_report, write_preview

    print(inspect_report(args.directory))
    png = args.png or os.path.join(args.directory, "preview.png")
    write_preview(args.directory, png)
    print(f"preview: {png}")


def cmd_export(args: argparse.Namespace) -> None:
    from .storage import export_imagefolder

    count = export_imagefolder(args.directory, args.out)
    print(f"exported {count} images to {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infer-fast", description="Kernel-accelerated INFER dataset distillation toolkit."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    info = sub.add_parser("info", help="versions and the kernel backends built and usable here")
    info.set_defaults(func=cmd_info)

    demo = sub.add_parser(
        "demo", help="kernel demo: check every backend against the reference, time them, run a mini UFC recovery on real data"
    )
    demo.add_argument("--iterations", type=int, default=60, help="recovery iterations of the mini run (default 60)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--out", default="demo-output", help="where the teacher, distilled set and preview go (default demo-output/)")
    demo.set_defaults(func=cmd_demo)

    models = sub.add_parser("models", help="list the model names create_model() accepts")
    models.set_defaults(func=cmd_models)
    datasets = sub.add_parser("datasets", help="list the registered datasets")
    datasets.set_defaults(func=cmd_datasets)

    teacher = sub.add_parser(
        "teacher",
        help="train a teacher on a real training set (checkpoints every epoch, resumes)",
        description="Train a teacher (SGD, cosine, crop+flip). Options from --config YAML are "
        "overridden by those given here. Running again with the same --out resumes an interrupted run.",
    )
    teacher.add_argument("--config", help="YAML file of options (e.g. configs/teacher-fashion-mnist.yaml)")
    teacher.add_argument("--dataset", help="dataset name (see `infer-fast datasets`)")
    teacher.add_argument("--model", help="model name (see `infer-fast models`; default convnet)")
    teacher.add_argument("--data-root", dest="data_root", help="directory holding the dataset files")
    teacher.add_argument("--epochs", type=int, help="training epochs (default 30)")
    teacher.add_argument("--batch-size", dest="batch_size", type=int, help="batch size (default 128)")
    teacher.add_argument("--lr", type=float, help="SGD learning rate (default 0.1)")
    teacher.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    teacher.add_argument("--weight-decay", dest="weight_decay", type=float, help="weight decay (default 5e-4)")
    teacher.add_argument("--seed", type=int, help="random seed (default 0)")
    teacher.add_argument("--device", help="auto, cpu or cuda (default auto)")
    teacher.add_argument("--out", help="checkpoint file to write")
    teacher.add_argument("--quiet", action="store_true", help="no progress bars")
    teacher.set_defaults(func=cmd_teacher)

    inspect = sub.add_parser("inspect", help="summarize a distilled set (compression ratio) and write a PNG preview")
    inspect.add_argument("directory", help="distilled-set directory")
    inspect.add_argument("--png", help="preview path (default DIRECTORY/preview.png)")
    inspect.set_defaults(func=cmd_inspect)

    export = sub.add_parser("export", help="export a distilled set as PNG class folders")
    export.add_argument("directory", help="distilled-set directory")
    export.add_argument("--to", choices=["imagefolder"], default="imagefolder", help="export format")
    export.add_argument("out", help="output directory (must not exist or be empty)")
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .ops.backends import BackendUnavailableError

    try:
        args.func(args)
    except (UserError, ValueError, FileNotFoundError, BackendUnavailableError) as exc:
        print(f"infer-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"infer-fast {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``infer-fast`` command line. User errors print one line and exit non-zero."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional


class UserError(Exception):
    """An error the user can fix (bad option, missing file...): shown without a traceback."""


def cmd_info(args: argparse.Namespace) -> None:
    from .info import format_info

    print(format_info())


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(iterations=args.iterations, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infer-fast", description="Kernel-accelerated INFER dataset distillation toolkit."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    info = sub.add_parser("info", help="versions and the kernel backends built and usable here")
    info.set_defaults(func=cmd_info)

    demo = sub.add_parser(
        "demo", help="kernel demo: check every backend against the reference, time them, run a mini UFC recovery"
    )
    demo.add_argument("--iterations", type=int, default=60, help="recovery iterations of the mini run (default 60)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (UserError, ValueError, FileNotFoundError) as exc:
        print(f"infer-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"infer-fast {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

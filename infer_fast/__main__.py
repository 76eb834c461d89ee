"""``python -m infer_fast``: the ``infer-fast`` command (the same arguments, the same exit status)."""
import signal
import sys

if __name__ == "__main__":
    try:
        from infer_fast.cli import main
    except KeyboardInterrupt:  # (Ctrl-C while the command's modules load: main's handlers do not exist yet)
        print(f"infer-fast: interrupted ({signal.SIGINT.name})", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    sys.exit(main())

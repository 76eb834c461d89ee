"""``python -m infer_fast``: the ``infer-fast`` command (the same arguments, the same exit status)."""
import sys

from infer_fast.cli import main

if __name__ == "__main__":
    sys.exit(main())

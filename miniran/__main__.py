"""Command line: ``miniran <command>`` or ``python -m miniran <command>``."""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    from miniran.functional._dispatch import reference_active
    from miniran.train.cli import main as cli_main

    try:
        reference_active()  # reads MINIRAN_REFERENCE
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    return cli_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())

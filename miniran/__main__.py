"""Command line: ``miniran <command>`` or ``python -m miniran <command>``."""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    try:
        from miniran.train.cli import main as cli_main
    except ValueError as exc:  # a bad setting read at import, e.g. MINIRAN_REFERENCE
        print(f"error: {exc}", file=sys.stderr)
        return 2

    return cli_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())

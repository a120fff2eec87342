"""``python -m pneumolab`` and the ``pneumolab`` console script: the command line, with a
Ctrl+C while it loads (imports, argument parsing) answered like one during a command, and freed
memory kept for reuse (:mod:`pneumolab.allocator`) from the start."""

from __future__ import annotations

import sys


def main() -> int:
    """Keep freed memory for reuse, load the command line and run it; 130 on a Ctrl+C before a
    command handles its own."""
    try:
        from pneumolab.allocator import reuse_freed_memory

        reuse_freed_memory()
        from pneumolab.cli import main as command_line

        return command_line()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

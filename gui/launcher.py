"""The `qlora-studio` command: no arguments (or `gui`) opens the window, anything else is a headless
command of core's CLI. Imports neither side at module level, so a headless command never loads Qt
and core never needs to know the window exists."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] == "gui":
        from qlora_studio.gui.display import EXIT_NO_WINDOW, display_problem

        problem = display_problem()
        if problem and not {"-h", "--help"} & set(argv):
            print(f"qlora-studio: {problem}", file=sys.stderr)
            return EXIT_NO_WINDOW
        from qlora_studio.gui.app import main as window

        return window(argv[1:])
    from qlora_studio.core.cli import main as headless

    return headless(argv)


if __name__ == "__main__":
    sys.exit(main())

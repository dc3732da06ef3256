"""Entry script for frozen builds (PyInstaller): the same `qlora-studio` command."""

import sys

from qlora_studio.gui.launcher import main

if __name__ == "__main__":
    sys.exit(main())

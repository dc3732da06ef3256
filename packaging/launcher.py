"""Entry script for frozen builds (PyInstaller): the same `qlora-studio` command."""

import multiprocessing
import sys

from qlora_studio.gui.launcher import main

if __name__ == "__main__":
    # A frozen app is its own Python: the model library's download process (multiprocessing "spawn")
    # starts this executable again, and this call turns that start into the child.
    multiprocessing.freeze_support()
    sys.exit(main())

"""`python -m qlora_studio.core.cli COMMAND ...`: the headless commands without the launcher."""

import sys

from qlora_studio.core.cli import main

sys.exit(main())

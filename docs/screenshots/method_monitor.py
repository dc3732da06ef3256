"""The Monitor replaying a finished run past SFT (its method's charts under the loss), e.g. the
DPO and GRPO runs bench/gpu_methods.py trained on the H200 (run folders without their weights).

    xvfb-run -s "-screen 0 1920x1200x24" python docs/screenshots/method_monitor.py RUN_DIR OUT.png [--size 1600x1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_screenshots import settle, setup_idle, wait_until  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", default="1600x1000")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="method-shot-"))
    os.environ.update(QLORA_STUDIO_SETTINGS=str(home / "settings.ini"), HF_HUB_OFFLINE="1")
    runs = home / "runs"
    run = runs / args.run_dir.name
    shutil.copytree(args.run_dir, run)

    from qlora_studio.gui.app import create_app
    from qlora_studio.gui.main_window import MainWindow
    from qlora_studio.gui.settings import Settings

    app = create_app()  # noqa: F841 - the window needs it alive
    settings = Settings()
    settings.set("setup/output_dir", str(runs))
    window = MainWindow(settings)
    window.resize(*(int(v) for v in args.size.split("x")))
    window.show()
    wait_until(lambda: window.gpus is not None)
    setup_idle(window)
    window.runs.refresh()
    window.runs.select_paths([run])
    window.runs._replay()
    window.tabs.setCurrentWidget(window.monitor)
    settle(500)
    window.monitor.board.flush()
    settle(500)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    window.grab().save(str(args.out), "PNG")
    print(args.out)
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

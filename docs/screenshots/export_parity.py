"""The Export dialog after a Q4_K_M export with its parity check: a trained run (the demo's, say)
exported through llama.cpp's quantizer and answered by both, side by side.

    xvfb-run -s "-screen 0 1920x1200x24" python docs/screenshots/export_parity.py RUN_DIR OUT.png [--quant q4_k_m]
        [--check-data sample:dates-eval]

Needs llama-cpp-python (the gguf extra).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_screenshots import settle, wait_for  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--quant", default="q4_k_m")
    parser.add_argument("--check-data", default="sample:dates-eval", help="rows to check on ('' : the validation split)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="export-shot-"))
    os.environ.update(QLORA_STUDIO_SETTINGS=str(home / "settings.ini"), HF_HUB_OFFLINE="1")

    from qlora_studio.gui.app import create_app
    from qlora_studio.gui.dialogs.export_dialog import ExportDialog

    app = create_app()  # noqa: F841 - the dialog needs it alive
    dialog = ExportDialog(str(args.run_dir))
    dialog.show()
    dialog.format.setValue("gguf")
    dialog.quant.setCurrentIndex(dialog.quant.findData(args.quant))
    dialog.out.setText(str(home / f"model-{args.quant}.gguf"))
    dialog.check_data.setText(args.check_data)
    settle(300)
    if not dialog.start():
        print(dialog.message.text(), file=sys.stderr)
        return 1
    wait_for(dialog.task.busy_changed, lambda busy: not busy, timeout_ms=1_800_000)
    settle(600)
    print(dialog.message.text())
    print(dialog.parity.text())
    dialog.grab().save(str(args.out), "PNG")
    print(f"{args.out}: written")
    return 0


if __name__ == "__main__":
    sys.exit(main())

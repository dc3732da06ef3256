"""core/ is headless: importing every core module must not pull in Qt or pyqtgraph."""

import pkgutil
import subprocess
import sys

import qlora_studio.core


def test_core_never_imports_qt():
    modules = [f"qlora_studio.core.{m.name}" for m in pkgutil.iter_modules(qlora_studio.core.__path__)]
    assert "qlora_studio.core.runner" in modules and "qlora_studio.core.memory" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'PyQt5', 'PyQt6', 'pyqtgraph', 'shiboken6'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"core imported: {out.stdout}"


def test_installed_under_one_namespace():
    import importlib.util

    assert importlib.util.find_spec("qlora_studio.gui") is not None
    assert importlib.util.find_spec("qlora_studio.resources") is not None
    for bare in ("core", "gui", "resources"):
        spec = importlib.util.find_spec(bare)
        assert spec is None or "qlora_studio" not in (spec.origin or ""), f"a bare '{bare}' package is importable"

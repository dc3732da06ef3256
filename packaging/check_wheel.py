"""Build QLoRA Studio's wheel from a copy of the project and check what went into it (CI runs it).

    python packaging/check_wheel.py [PROJECT]              # `pip wheel -v --no-build-isolation`
    python packaging/check_wheel.py --isolated             # pip's default fresh build environment
    python packaging/check_wheel.py --sdist                # sdist, then the wheel from it (python -m build)

Fails when the wheel lacks a package below core/ or gui/ or a data file of resources/ (icons,
styles, presets, sample data), holds a bare top-level core/gui/resources or files of tests, bench,
packaging or docs, or when setuptools warned. pip hides the build backend's output unless -v is
given, so a plain `pip wheel .` would not show the warnings: this always builds verbosely.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT_DIR = Path(__file__).resolve().parent.parent
ROOTS = {"core": "qlora_studio/core", "gui": "qlora_studio/gui", "resources": "qlora_studio/resources"}
DATA_SUFFIXES = (".svg", ".png", ".ico", ".icns", ".qss", ".yaml", ".jsonl", ".json")
IGNORE = shutil.ignore_patterns(".git", "dist", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".benchmarks", ".ns", ".venv",
                                ".whl")
WARNING_LINE = re.compile(r"(?:_Warning|SetuptoolsWarning|SetuptoolsDeprecationWarning|UserWarning): (.+)")


@dataclass
class BuildResult:
    wheel: Path
    log: str
    warnings: list[str]
    names: list[str]
    problems: list[str] = field(default_factory=list)


def copy_project(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=IGNORE, symlinks=True)
    return target


def build(project: Path, sdist: bool = False, isolated: bool = False, setuptools_pin: str | None = None
          ) -> tuple[Path, str]:
    """Build verbosely. isolated=True builds in a fresh environment from the package index (as pip does
    by default), with setuptools pinned to `setuptools_pin` when given; else with the installed setuptools."""
    out = project / "dist"
    env = dict(os.environ)
    if sdist:
        command = [sys.executable, "-m", "build", "--outdir", str(out), str(project)]
        if not isolated:
            command[3:3] = ["--no-isolation", "--skip-dependency-check"]
    else:
        command = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(out), str(project)]
        if not isolated:
            command.insert(5, "--no-build-isolation")
    if setuptools_pin:
        pin = project / "build-constraints.txt"
        pin.write_text(f"setuptools=={setuptools_pin}\n")
        env["PIP_CONSTRAINT"] = str(pin)
    run = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=600, env=env)
    log = run.stdout + run.stderr
    if run.returncode != 0:
        raise RuntimeError(f"build failed ({run.returncode}):\n{log[-4000:]}")
    wheels = sorted(out.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel in {out}, found {wheels}")
    return wheels[0], log


def setuptools_warnings(log: str) -> list[str]:
    return [m.group(1).strip() for m in WARNING_LINE.finditer(log)]


def expected_packages(project: Path) -> list[str]:
    """Every folder below core/ and gui/ holding Python files, as its installed package path."""
    wanted = []
    for folder, installed in ROOTS.items():
        for init in (project / folder).rglob("*.py"):
            if "__pycache__" in init.parts:
                continue
            wanted.append(f"{installed}/{init.parent.relative_to(project / folder).as_posix()}".rstrip("/."))
    return sorted(set(wanted))


def expected_data(project: Path) -> list[str]:
    return sorted(f"qlora_studio/resources/{p.relative_to(project / 'resources').as_posix()}"
                  for p in (project / "resources").rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)


def inspect(project: Path, wheel: Path, log: str) -> BuildResult:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = next((archive.read(n).decode().split() for n in names if n.endswith(".dist-info/top_level.txt")), [])
    result = BuildResult(wheel, log, setuptools_warnings(log), names)
    folders = {str(Path(n).parent) for n in names if n.endswith(".py")}
    for package in expected_packages(project):
        if package not in folders:
            result.problems.append(f"missing package {package.replace('/', '.')}")
    for data in expected_data(project):
        if data not in names:
            result.problems.append(f"missing data file {data}")
    bare = sorted({n.split("/")[0] for n in names if n.split("/")[0] in ROOTS})
    if bare:
        result.problems.append(f"bare top-level folders in the wheel: {', '.join(bare)}")
    if top_level and top_level != ["qlora_studio"]:
        result.problems.append(f"top_level.txt lists {top_level}")
    stray = sorted(n for n in names if n.startswith(("tests/", "bench/", "packaging/", "docs/")))
    if stray:
        result.problems.append(f"files outside the three packages: {stray[:5]}")
    for warning in result.warnings:
        result.problems.append(f"setuptools warning: {warning}")
    return result


def check(source: Path, sdist: bool = False, extra_room: str | None = None,
          isolated: bool = False, setuptools_pin: str | None = None) -> BuildResult:
    with tempfile.TemporaryDirectory(prefix="wheelcheck-") as tmp:
        project = copy_project(source, Path(tmp) / "project")
        if extra_room:
            room = project / extra_room
            room.mkdir(parents=True)
            (room / "__init__.py").write_text('"""A room added after the pyproject was written."""\n')
        wheel, log = build(project, sdist=sdist, isolated=isolated, setuptools_pin=setuptools_pin)
        result = inspect(project, wheel, log)
        kept = Path(tempfile.mkdtemp(prefix="wheelcheck-dist-")) / wheel.name
        shutil.copy(wheel, kept)
        result.wheel = kept
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path, nargs="?", default=ROOT_DIR)
    parser.add_argument("--sdist", action="store_true", help="build sdist then wheel (python -m build)")
    parser.add_argument("--isolated", action="store_true", help="build in a fresh environment (pip's default)")
    parser.add_argument("--setuptools", metavar="VERSION", help="with --isolated: pin setuptools to this version")
    parser.add_argument("--list", action="store_true", help="print the wheel's files")
    args = parser.parse_args(argv)
    result = check(args.project, args.sdist, isolated=args.isolated, setuptools_pin=args.setuptools)
    print(f"wheel: {result.wheel} ({len(result.names)} files)")
    for warning in result.warnings:
        print(f"setuptools warning: {warning}")
    if args.list:
        print("\n".join(result.names))
    for problem in result.problems:
        print(f"PROBLEM: {problem}")
    print("OK" if not result.problems else f"{len(result.problems)} problem(s)")
    return 0 if not result.problems else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""packaging/install.sh picks the PyTorch build a machine needs (issue 12: `pip install torch`
gave the CPU build on a user's NVIDIA machine) and says which."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "packaging" / "install.sh"


def torch_index(tmp_path, smi_output: str | None, **env):
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + (f"cat <<'EOF'\n{smi_output}\nEOF\n" if smi_output else "exit 9\n"))
    smi.chmod(0o755)
    return subprocess.run(["bash", str(SCRIPT), "--torch-index"], capture_output=True, text=True, timeout=30,
                          env={"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path), **env})


HEADER = "| NVIDIA-SMI 570.86.15    Driver Version: 570.86.15    CUDA Version: {} |"


@pytest.mark.parametrize("driver, build", [("13.0", "cu130"), ("12.9", "cu128"), ("12.8", "cu128"),
                                           ("12.4", "cu126"), ("12.0", "cu126")])
def test_a_cuda_build_that_the_driver_runs(tmp_path, driver, build):
    done = torch_index(tmp_path, HEADER.format(driver))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"https://download.pytorch.org/whl/{build}"
    assert f"CUDA build {build}" in done.stderr and driver in done.stderr


def test_the_cpu_build_without_nvidia_and_a_clear_line_for_an_old_driver(tmp_path):
    cpu = torch_index(tmp_path, None)
    assert cpu.returncode == 0 and cpu.stdout.strip() == "https://download.pytorch.org/whl/cpu"
    assert "CPU build" in cpu.stderr
    old = torch_index(tmp_path, HEADER.format("11.8"))
    assert old.returncode == 1 and old.stdout == "" and "Update the driver" in old.stderr
    chosen = torch_index(tmp_path, HEADER.format("12.4"), TORCH_INDEX_URL="https://example.org/whl/cu124")
    assert chosen.stdout.strip() == "https://example.org/whl/cu124"


def test_the_lock_pins_every_dependency_within_its_range():
    """packaging/constraints.txt: what a fresh machine installs is what the suite passed with."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    root = SCRIPT.parents[1]
    lock = {}
    for line in (root / "packaging" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            lock[canonicalize_name(name)] = version
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"] + project["optional-dependencies"]["gpu"]
    for text in wanted:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement.name} is not in the lock"
        assert requirement.specifier.contains(lock[name], prereleases=True), f"{name}=={lock[name]} is outside {requirement}"
    for script in ("packaging/install.sh", ".ci/run"):
        assert "-c packaging/constraints.txt" in (root / script).read_text() or \
            "(-c packaging/constraints.txt)" in (root / script).read_text(), script

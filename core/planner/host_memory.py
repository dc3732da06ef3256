"""Host memory a run pins: offloaded checkpoints are page-locked, never swapped, so the planner
keeps them to a share of the computer's RAM and says which workstations hold them."""

from __future__ import annotations

from qlora_studio.core.model.devices import host_ram_bytes

GIB = 1024**3

# Pinned (page-locked) memory can never be swapped out: the OS, the model's loading, the dataset and
# the window need the rest of the RAM. A rule of thumb, not a measurement: at most half is pinned.
PINNED_SHARE = 0.5
WORKSTATION_RAM_GB = (8, 16, 32, 64, 128, 256, 512)


def pinned_fits(host_bytes: int, ram_bytes: int | None) -> bool:
    return ram_bytes is None or host_bytes <= PINNED_SHARE * ram_bytes


def ram_needed_sentence(host_bytes: int) -> str:
    """Which workstations hold this much pinned memory, by their RAM."""
    smallest = next((gb for gb in WORKSTATION_RAM_GB if pinned_fits(host_bytes, gb * GIB)), None)
    if smallest is None:
        return f"more than half of {WORKSTATION_RAM_GB[-1]} GB of RAM"
    return f"a computer with {smallest} GB of RAM or more"


def planned_ram_bytes(config) -> int | None:
    """The RAM a plan is made for: train.experimental.host_ram_gb, else this computer's."""
    wanted = config.train.experimental.host_ram_gb
    return int(wanted * GIB) if wanted else host_ram_bytes()

"""One rank of a launched run (`python -m qlora_studio.core.training.worker RUN_DIR`): train on the
shared run folder; rank 0 prints its events as JSON lines and obeys <run>/control.json."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(run_dir: str) -> int:
    from qlora_studio.core.model.devices import configure_cuda_allocator
    from qlora_studio.core.quiet import quiet_libraries

    configure_cuda_allocator()  # inherited from the launching process, unless started by hand
    quiet_libraries()  # before the imports below pull in transformers and bitsandbytes
    from qlora_studio.core.atomic import write_json_atomic
    from qlora_studio.core.training.control import ControlFile, TrainControl
    from qlora_studio.core.training.events import JsonLinesSink
    from qlora_studio.core.training.runner import run_training

    rank = int(os.environ.get("RANK", "0"))
    control = TrainControl()
    done = ControlFile(run_dir).follow(control) if rank == 0 else None
    try:
        result = run_training(None, JsonLinesSink() if rank == 0 else None, control, resume_from=run_dir)
    finally:
        if done is not None:
            done.set()
    ranks = Path(run_dir) / "ranks"
    ranks.mkdir(exist_ok=True)
    write_json_atomic(ranks / f"rank-{rank}.json", {
        "rank": rank, "status": result.status, "step": result.step, "adapter_digest": result.adapter_digest,
        "error": result.error,
    })
    if result.status == "failed" and rank != 0:
        print(f"rank {rank} failed: {result.error}", file=sys.stderr, flush=True)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

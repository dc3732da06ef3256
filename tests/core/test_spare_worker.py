"""The supervisor's spare worker: started before its run, it trains the next run (Start skips the
seconds of imports); a run whose environment differs starts cold and lets the spare go."""

import os

from qlora_studio.core.runs import events as ev
from qlora_studio.core.training.control import TrainControl
from qlora_studio.core.training.supervisor import Spare, run_supervised


def supervised(config) -> tuple[ev.RunResult, set[int]]:
    control, pids = TrainControl(), set()

    def emit(event) -> None:
        if control.process_id is not None:
            pids.add(control.process_id)

    return run_supervised(config, emit, control), pids


def test_the_spare_trains_the_next_run_and_another_environment_starts_cold(tiny_config):
    config = tiny_config.with_overrides({"train.max_steps": 2, "train.save_every_steps": 2})
    Spare.prepare()
    spare = Spare._waiting[0]
    Spare.prepare()  # one is enough
    assert Spare._waiting[0] is spare
    result, pids = supervised(config)
    assert result.status == "finished", result.error
    assert pids == {spare.pid} and spare.poll() == 0 and Spare._waiting is None

    Spare.prepare()
    unused = Spare._waiting[0]
    assert Spare.take({**os.environ, "QLORA_STUDIO_TEST_ENV": "differs"}) is None  # another run environment: cold
    assert unused.poll() is not None and Spare._waiting is None  # let go, not left behind

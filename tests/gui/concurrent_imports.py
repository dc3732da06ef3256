"""Run in a fresh interpreter by test_app.py: four window tasks start at once, each importing a
different name from transformers, as the model line, the X-ray, the memory estimate and a run do
on the window's first start. Prints one line per task: its name and "ok" or the error."""

import sys

from PySide6.QtCore import QCoreApplication

from qlora_studio.gui.workers.tasks import TaskRunner


def auto_config():
    from transformers import AutoConfig

    return AutoConfig.__name__


def auto_model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.__name__


def auto_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.__name__


def trainer():
    from transformers import Trainer

    return Trainer.__name__


app = QCoreApplication([])
runners, outcomes = [], {}


def done(name, text):
    outcomes[name] = text
    if len(outcomes) == len(runners):
        app.quit()


for fn in (auto_config, auto_model, auto_tokenizer, trainer):
    runner = TaskRunner(fn)
    runner.result.connect(lambda _tag, value, name=fn.__name__: done(name, "ok"))
    runner.error.connect(lambda _tag, error, name=fn.__name__: done(name, error.reason))
    runners.append(runner)
for runner in runners:
    runner.request()
app.exec()
for runner in runners:
    runner.shutdown()
for name, text in sorted(outcomes.items()):
    print(f"{name}: {text}")
sys.exit(0 if all(text == "ok" for text in outcomes.values()) else 1)

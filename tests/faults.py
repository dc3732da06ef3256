"""Faults a test injects into a real run."""


def poison_loss(monkeypatch, bad_steps: set[int]):
    """A batch whose loss is NaN at the given optimizer steps (as a broken row or an fp16 overflow gives)."""
    from qlora_studio.core.training.trainer import StudioTrainer

    real = StudioTrainer.compute_loss

    def compute_loss(self, model, inputs, *args, **kwargs):
        loss = real(self, model, inputs, *args, **kwargs)
        return loss * float("nan") if self.state.global_step + 1 in bad_steps else loss

    monkeypatch.setattr(StudioTrainer, "compute_loss", compute_loss)

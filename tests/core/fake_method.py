"""A fake fine-tuning method for tests/core/test_method_registry.py: one
file, registered there with one line. It trains only the normalisation
layers, and its row declares capabilities no real method combines
(needs a CUDA GPU, cannot pack rows), so the test can see every reader of
the method table honour them."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting


@dataclass(frozen=True, kw_only=True)
class FakeParams:
    scale: float = setting(1.0, help="Unused: a setting, so the form draws one field for the method.", min=0.0,
                           max=10.0, basic=True)


def prepare(model, params: FakeParams, context=None):
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("norm" in name)
    return model

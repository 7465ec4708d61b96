"""A method is one file plus one ``register_method`` line, and what its row
declares is honoured by every reader of the table: the training loop, the
new-job form and its estimate, and the catalogue (CLI and API)."""

import pytest

from tests.core import fake_method
from tuning.config import TrainConfig
from tuning.events import MemorySink
from tuning.methods import METHODS, describe, register_method


@pytest.fixture
def fake():
    method = register_method(fake_method, name="fake", label="Fake method", group="selective", produces="model",
                             description="Trains the norms.", paper="https://arxiv.org/abs/0000.00000",
                             params=fake_method.FakeParams, needs_cuda=True, packs_rows=False)
    yield method
    del METHODS["fake"]  # the table is shared by every test in the process


def test_registering_a_taken_name_is_refused(fake):
    with pytest.raises(ValueError, match="registered already"):
        register_method(fake_method, name="fake", label="Again", group="selective", description="", paper="",
                        params=fake_method.FakeParams)


def test_the_catalogue_reports_the_declared_capabilities(fake):
    row = describe(fake)
    assert row["needs_cuda"] is True and row["packs_rows"] is False and row["predicts_each_token"] is True
    assert [spec["name"] for spec in row["params"]] == ["scale"]


def test_the_loop_pads_batches_for_a_method_that_cannot_pack(fake, tiny_model, memorisable_jsonl, tmp_path):
    from tuning.train import run_train

    sink = MemorySink()
    config = TrainConfig.from_dict({"base_model": str(tiny_model), "dataset_path": str(memorisable_jsonl),
                                    "output_dir": str(tmp_path), "max_steps": 2, "batch_size": 4,
                                    "precision": "fp32", "method": "fake", "packing": True})
    result = run_train(config, sink)
    logs = [event.message for event in sink.of_kind("log")]
    assert result.status == "succeeded" and result.steps == 2
    assert "Padded batches instead of packed ones: Fake method does not train on packed rows" in logs
    assert not any(message.startswith("Packing rows") for message in logs)


def test_the_form_refuses_a_cuda_method_on_a_studio_without_gpu_workers(fake):
    from studio.jobs.forms import NO_GPU, method_to_draw, method_unavailable_reason

    assert method_unavailable_reason(fake, task="sft", gpu_pools=[]) == NO_GPU
    assert method_unavailable_reason(fake, task="sft", gpu_pools=["gpu"]) == ""
    drawn, notice = method_to_draw("fake", task="sft", gpu_pools=[])
    assert drawn.name != "fake" and notice.startswith("Fake method is unavailable")
    assert method_to_draw("fake", task="sft", gpu_pools=["gpu"]) == (fake, "")

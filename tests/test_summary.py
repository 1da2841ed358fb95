"""The typed run summary (repan_zoo.runtime.summary): written by the trainer, read by publishing."""
import json

import pytest
import torch

from repan_zoo.annealing import RepAnTrainer, TrainConfig
from repan_zoo.errors import PublishError
from repan_zoo.hub.publish import read_run
from repan_zoo.runtime.summary import RunSummary, SummaryError
from tinyrep_models import synthetic_splits

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def final_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig.from_dict(dict(method="repan", model="tinyrep_test", cycles=2, epochs=1, batch_size=32,
                                     eval_batch_size=64, lr=0.05, calib_batches=1, max_steps_per_epoch=2))
    result = RepAnTrainer(cfg, synthetic_splits(), out=out, plot=False).run()
    assert result.summary is not None and result.final == result.summary.as_dict()
    return out / "final.json"


def test_the_trainer_writes_a_summary_that_reads_back_typed(final_json):
    s = RunSummary.read(final_json)
    assert s.model == "tinyrep_test" and s.method == "repan" and s.recipe["cycles"] == 2
    assert 0 <= s.test_top1 <= 100 and s.exactness["model_rel_error"] <= 1e-5
    assert s.checkpoint["path"] == "deploy.safetensors" and s.reload_check["deploy_form"] == "deploy"
    assert RunSummary.from_dict(s.as_dict()) == s


def test_publishing_reads_the_summary_and_the_generic_json_alike(final_json, tmp_path):
    typed = read_run(final_json, {})
    doc = json.loads(final_json.read_text())
    del doc["versions"]  # no longer the trainer's summary: the generic reader
    generic_path = tmp_path / "generic.json"
    generic_path.write_text(json.dumps(doc))
    generic = read_run(generic_path, {})
    assert typed == generic


@pytest.mark.parametrize("change,words", [
    ({"test_top1": "93"}, "test_top1 must be a number"),
    ({"recipe": []}, "recipe must be an object"),
    ({"exactness": None}, "exactness must be an object"),
])
def test_a_broken_summary_is_named(final_json, tmp_path, change, words):
    doc = {**json.loads(final_json.read_text()), **change}
    with pytest.raises(SummaryError, match=words):
        RunSummary.from_dict(doc)
    bad = tmp_path / "final.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(PublishError, match=words):
        read_run(bad, {})


def test_missing_fields_and_unreadable_files(tmp_path):
    with pytest.raises(SummaryError, match="missing"):
        RunSummary.from_dict({"model": "x"})
    (tmp_path / "f.json").write_text("{not json")
    with pytest.raises(SummaryError, match="cannot read"):
        RunSummary.read(tmp_path / "f.json")

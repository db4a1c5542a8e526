"""A parameter travels as a typed value: config.updated validates the one section it changes."""

from __future__ import annotations

import pytest

from galot_core.config import Config, updated
from galot_core.context import Context
from galot_core.errors import GalotError
from galot_core.experiment import baseline_config


def test_updated_changes_one_section_and_keeps_the_others():
    cfg = Config()
    new = updated(cfg, "runner", dask_address="tcp://10.0.0.1:8786")
    assert new.runner.dask_address == "tcp://10.0.0.1:8786" and cfg.runner.dask_address != new.runner.dask_address
    assert new.data is cfg.data and new.gal is cfg.gal  # already validated: taken as they are


@pytest.mark.parametrize("section, values, message", [
    ("gal", {"epsilon": -1}, "gal.epsilon must be >= 0"),
    ("gal", {"nope": 1}, "unknown key 'gal.nope'"),
    ("experiment", {"name": "a/b"}, "experiment.name must be a plain folder name"),
    ("experiment", {"mode": "gal"}, None),
])
def test_updated_refuses_in_one_line_what_params_yaml_would(section, values, message):
    if message is None:
        assert getattr(updated(Config(), section, **values), section).mode == "gal"
        return
    with pytest.raises(GalotError, match=message) as error:
        updated(Config(), section, **values)
    assert "\n" not in str(error.value)


def test_baseline_of_an_adapted_galot_run_is_a_plain_al_run(tmp_path):
    cfg = updated(Config(), "experiment", runs_dir=str(tmp_path), name="galot")
    cfg = updated(cfg, "gal", adapt="lora")
    base = baseline_config(cfg, "MarginSampling")
    assert (base.experiment.mode, base.al.strategy, base.gal.adapt) == ("al", "MarginSampling", "none")
    assert base.run_dir == tmp_path / "galot-baselines" / "MarginSampling"
    assert (base.data, base.train, base.al.budget_per_cycle) == (cfg.data, cfg.train, cfg.al.budget_per_cycle)


def test_epsilon_schedule_reads_the_run_folder_once(tmp_path, monkeypatch):
    cfg = updated(Config(), "experiment", runs_dir=str(tmp_path), name="run", cycles=4)
    ctx = Context(cfg)
    ctx.folder.write_config(updated(cfg, "experiment", cycles=2).to_dict())  # started with N = 2
    reads = []
    original = type(ctx.folder).read_config
    monkeypatch.setattr(type(ctx.folder), "read_config", lambda self: reads.append(1) or original(self))
    assert [ctx.epsilon(c) for c in (1, 2, 3, 4)] == [ctx.epsilon(1), ctx.epsilon(2), ctx.epsilon(2), ctx.epsilon(2)]
    assert ctx.schedule_cycles() == 2 and len(reads) == 1

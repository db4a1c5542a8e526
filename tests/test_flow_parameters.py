"""The flows take the experiment's parameters as one typed Config (issue 17, item 4): the Prefect UI
renders it as a form, a parameter dict from the API is validated by the same schema, and overrides
apply to the Config itself."""

from __future__ import annotations

import pytest

from galot_core.config import AL_STRATEGIES, Config
from galot_core.config_errors import field_spec
from galot_core.errors import GalotError
from galot_core.params_file import load_config, with_overrides


@pytest.fixture(scope="module")
def schema():
    from prefect.utilities.callables import parameter_schema

    from galot.flows.galot import galot_cycle

    return parameter_schema(galot_cycle.fn).model_dump()


def test_the_prefect_form_has_every_key_with_its_type_choices_range_and_help(schema):
    assert list(schema["properties"]) == ["config", "overrides", "pause_for_labels"]
    definitions = schema["definitions"]
    for section, info in Config.model_fields.items():
        form = definitions[info.annotation.__name__]
        assert form["additionalProperties"] is False
        assert list(form["properties"]) == list(info.annotation.model_fields), section
        for key, field in form["properties"].items():
            spec = field_spec(Config, section, key)
            if spec.max is not None:  # an optional key: the bound is on its non-null alternative
                bounded = [f for f in [field, *field.get("anyOf", [])] if "maximum" in f]
                assert bounded and bounded[0]["maximum"] == spec.max, f"{section}.{key}"
            if spec.help:
                assert field["description"] == spec.help, f"{section}.{key}"
    strategy = definitions["ALConfig"]["properties"]["strategy"]
    assert strategy["enum"] == list(AL_STRATEGIES) and strategy["type"] == "string"
    lr = definitions["TrainConfig"]["properties"]["lr"]
    assert lr["exclusiveMinimum"] == 0.0 and lr["maximum"] == 100.0 and lr["type"] == "number"


def test_a_parameter_dict_from_the_api_becomes_a_validated_config():
    from prefect.exceptions import ParameterTypeError

    from galot.flows.galot import galot_cycle

    params = galot_cycle.validate_parameters({"config": {"al": {"strategy": "BALD"}, "transfer": {"archs": ["vgg16"]}}})
    cfg = params["config"]
    assert isinstance(cfg, Config) and cfg.al.strategy == "BALD" and cfg.transfer.archs == ("vgg16",)
    assert cfg.gal == Config().gal  # unset keys keep the schema's defaults
    for bad in ({"al": {"strategy": "Margin"}}, {"train": {"lr": "0.1"}}, {"gal": {"template": "no label"}},
                {"al": {"unknown": 1}}):
        with pytest.raises(ParameterTypeError):
            galot_cycle.validate_parameters({"config": bad})


def test_a_config_round_trips_through_json_unchanged(tmp_path):
    cfg = load_config("params.yaml", ["transfer.archs=[vgg16, mobilenet_v2]", "gal.epsilon=0.3"])
    assert Config.model_validate_json(cfg.model_dump_json()) == cfg
    assert Config.model_validate(cfg.to_dict()) == cfg  # what a deployment stores and a run gets back


def test_overrides_apply_to_a_config_and_are_validated():
    cfg = load_config("params.yaml")
    changed = with_overrides(cfg, ["al.strategy=BALD", "gal.epsilon=0.1"])
    assert (changed.al.strategy, changed.gal.epsilon) == ("BALD", 0.1)
    assert changed.model_copy(update={"al": cfg.al, "gal": cfg.gal}) == cfg  # nothing else moved
    assert with_overrides(cfg, []) is cfg
    with pytest.raises(GalotError, match=r"^--set: gal.epsilon must be >= 0.0, got -1.0$"):
        with_overrides(cfg, ["gal.epsilon=-1"])


def test_a_config_is_immutable():
    from pydantic import ValidationError

    cfg = Config()
    with pytest.raises(ValidationError):
        cfg.gal.epsilon = 0.3  # type: ignore[misc]

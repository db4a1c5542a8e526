import pytest
import yaml

from galot_core.config import AL_STRATEGIES, Config
from galot_core.params_file import load_config
from galot_core.errors import GalotError


def write(tmp_path, data):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_defaults_follow_table8():
    cfg = Config()
    assert cfg.al.strategy == "MarginSampling" and cfg.gal.strategy == "MarginSampling"
    assert cfg.gal.samples == 6 and cfg.gal.steps == 10 and cfg.gal.alpha_ratio == pytest.approx(0.2)
    assert cfg.gal.epsilon == 0.5 and cfg.gal.epsilon_schedule == "linear" and not cfg.gal.epsilon_relative
    assert cfg.gal.template == "a realistic photo of a {label}" and cfg.gal.budget_factor == 1.0


def test_repo_params_yaml_is_valid():
    cfg = load_config("params.yaml")
    assert cfg.experiment.mode == "al+gal" and cfg.data.dataset == "mnist5k"


def test_defaults_equal_empty_file(tmp_path):
    assert load_config(write(tmp_path, {})) == Config()


def test_overrides_parse_yaml_scalars(tmp_path):
    cfg = load_config(write(tmp_path, {}), ["al.strategy=BALD", "gal.epsilon=1.5", "data.download=true",
                                            "data.image_size=null"])
    assert cfg.al.strategy == "BALD" and cfg.gal.epsilon == 1.5 and cfg.data.download is True
    assert cfg.data.image_size is None


def test_int_accepted_for_float(tmp_path):
    assert load_config(write(tmp_path, {"gal": {"epsilon": 1}})).gal.epsilon == 1.0


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"al": {"strategy": "Margin"}}, "al.strategy must be one of [RandomSampling"),
        ({"al": {"budget": 3}}, "unknown key 'al.budget' (allowed in 'al': strategy, budget_per_cycle"),
        ({"gal": {"epsilon": -0.1}}, "gal.epsilon must be >= 0.0, got -0.1"),
        ({"experiment": {"cycles": 0}}, "experiment.cycles must be >= 1, got 0"),
        ({"al": {"budget_per_cycle": "ten"}}, "al.budget_per_cycle must be an integer, got 'ten'"),
        ({"al": {"budget_per_cycle": True}}, "al.budget_per_cycle must be an integer, got True"),
        ({"model": {"arch": "resnet50"}}, "model.arch must be one of [small_cnn, resnet18"),
        ({"data": {"dataset": "mnist"}}, "data.dataset must be one of [mnist5k"),
        ({"experiment": {"mode": "galot"}}, "experiment.mode must be one of [al, gal, al+gal]"),
        ({"gal": {"template": "a photo"}}, "gal.template must contain '{label}'"),
        ({"experiment": {"name": "../escape"}}, "experiment.name must be a plain folder name"),
        ({"bogus": {}}, "unknown section 'bogus'"),
        ({"train": {"lr": 0}}, "train.lr must be > 0.0, got 0.0"),
        ({"train": ["epochs"]}, "'train' must be a mapping of keys"),
    ],
)
def test_bad_params_give_one_clear_line(tmp_path, data, expected):
    with pytest.raises(GalotError) as e:
        load_config(write(tmp_path, data))
    msg = str(e.value)
    assert expected in msg and "\n" not in msg and msg.startswith(str(tmp_path))


def test_bad_yaml_and_missing_file(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("al: [unclosed\n")
    with pytest.raises(GalotError, match="not valid YAML at line"):
        load_config(p)
    with pytest.raises(GalotError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("bad", ["al.strategy", "strategy=BALD", "a.b.c=1"])
def test_bad_override_syntax(tmp_path, bad):
    with pytest.raises(GalotError, match="--set"):
        load_config(write(tmp_path, {}), [bad])


def test_strategy_names_match_paper_table1():
    assert set(AL_STRATEGIES) == {"RandomSampling", "EntropySampling", "MarginSampling", "LeastConfidence",
                                  "BALD", "BADGE", "MeanSTD", "VarRatio", "KMeans", "CoreSet", "LossPrediction"}


def test_params_yaml_is_the_schema_defaults_plus_the_embedded_preset():
    """One relation between the two, stated once (galot_core.config.EMBEDDED_PRESET)."""
    from galot_core.config import EMBEDDED_PRESET

    defaults, preset = Config().to_dict(), load_config("params.yaml").to_dict()
    changed = {(s, k): preset[s][k] for s in defaults for k in defaults[s] if preset[s][k] != defaults[s][k]}
    assert changed == EMBEDDED_PRESET


def test_a_runs_config_json_is_accepted_as_params(tmp_path):
    """A run's config.json reproduces its settings as --params, numbers like 1e-06 included (as YAML
    1.1, ``1e-06`` would be the string '1e-06')."""
    import json

    cfg = load_config("params.yaml", ["gal.epsilon=0.3"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert "1e-06" in path.read_text() and load_config(path) == cfg
    path.write_text('{"gal": {"epsilon": 0.1,}}')
    with pytest.raises(GalotError, match=r"config.json: not valid JSON at line 1; fix the syntax$"):
        load_config(path)

"""Hostile inputs (issue 19), params.yaml and --set: every number finite and bounded, error messages
that never echo unbounded input, YAML aliases refused.

Every case goes through the real `galot` command (in this process, or in a fresh process with a
memory limit: tests/hostile_util.py) and asserts one line, the exit code (2 for a bad input;
`galot verify` reports problems with 1) and an unchanged run folder.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from galot_core.config import Config, config_from_dict
from galot_core.config_errors import field_spec
from galot_core.errors import GalotError
from tests.hostile_util import assert_one_line_error, cli, galot


# ----- 1. every number is finite and bounded ---------------------------------------------------
def _numeric_fields():
    for section, info in Config.model_fields.items():
        for name in info.annotation.model_fields:
            spec = field_spec(Config, section, name)
            if spec.kind in (int, float):
                yield f"{section}.{name}", spec.kind, spec


NUMERIC = list(_numeric_fields())
FLOATS = [key for key, tp, _ in NUMERIC if tp is float]


@pytest.mark.parametrize("key", FLOATS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400])
def test_every_float_key_refuses_non_finite_numbers(key, value):
    section, name = key.split(".")
    with pytest.raises(GalotError, match=f"{key} must be a finite number") as e:
        config_from_dict({section: {name: value}})
    assert len(str(e.value)) < 200 and "\n" not in str(e.value)


@pytest.mark.parametrize("key", [key for key, _, _ in NUMERIC])
def test_every_number_has_an_upper_bound_with_a_reason(key):
    """Size-like keys (every integer) say why their bound is where it is; max + 1 is refused naming it."""
    tp, f = next((tp, f) for k, tp, f in NUMERIC if k == key)
    hi = f.max
    assert hi is not None, f"{key} has no upper bound"
    if tp is int:
        assert f.why and f.why in f.help, f"{key}: no reason for its bound"
    section, name = key.split(".")
    with pytest.raises(GalotError, match=f"{key} must be <= ") as e:
        config_from_dict({section: {name: int(hi) + 1 if tp is int else hi * 2 + 1}})
    assert f.why in str(e.value)


@pytest.mark.parametrize("override, expected", [
    ("train.lr=.inf", "train.lr must be a finite number, got inf"),
    ("train.lr=.nan", "train.lr must be a finite number, got nan"),
    ("gal.epsilon=-.inf", "gal.epsilon must be a finite number"),
    ("t2i.guidance_scale=.NaN", "t2i.guidance_scale must be a finite number"),
    ("data.image_size=100000", "data.image_size must be <= 4096 (every image is held in memory"),
    ("t2i.batch_size=1e999", "t2i.batch_size must be an integer, got '1e999'"),
    ("t2i.guidance_scale=1.0e+999", "t2i.guidance_scale must be a finite number, got inf"),
    ("train.batch_size=" + "9" * 5000, "train.batch_size must be an integer, got '9999"),
    ("train.batch_size=" + "9" * 4000, "train.batch_size must be <= 65536"),
])
def test_non_finite_and_oversized_numbers_on_the_command_line(tmp_path, capsys, override, expected):
    params = tmp_path / "params.yaml"
    params.write_text("experiment: {name: x}\n")
    r = cli(capsys, "verify", "--params", str(params), "--set", override)
    assert_one_line_error(r, expected)
    assert not (tmp_path / "runs").exists()


# ----- 2. error messages never echo unbounded input; YAML aliases refused ---------------------
BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("text, expected", [
    (BOMB + "gal:\n  template: *i\n", "YAML alias (*name) at line"),                       # value bomb
    (BOMB + "gal: *i\n", "YAML alias (*name) at line"),                                    # section bomb
    ("[" * 100_000 + "]" * 100_000, "params.yaml"),                                         # nesting
    ("al:\n  budget_per_cycle: " + "9" * 100_000 + "\n", "a number with thousands of digits"),
])
def test_params_bombs_are_one_line_in_bounded_memory(tmp_path, text, expected):
    params = tmp_path / "params.yaml"
    params.write_text(text)
    r = galot("verify", "--params", str(params), budget_mb=200, timeout=60)
    assert_one_line_error(r, expected)
    assert len(r.err) < 400 and r.seconds < 60


@pytest.mark.parametrize("text, expected", [
    ("base: &b {name: x}\nexperiment: *b\n", "YAML alias (*name) at line 2"),              # a harmless alias
    ("gal:\n  template: '" + "A" * 500_000 + "'\n", "gal.template must contain '{label}', got 'AAAA"),
    ("experiment:\n  name: '" + "../" * 100_000 + "'\n", "experiment.name must be a plain folder name"),
    ("al:\n  strategy: [" + ",".join(["Margin"] * 100_000) + "]\n", "al.strategy must be a string"),
    ("x" * 2_000_000, "larger than 1 MiB"),
    ("gal: {" + ",".join(f"k{i}: 1" for i in range(20000)) + "}\n", "unknown key 'gal.k0'"),
    ("? " + "k" * 300_000 + "\n: 1\n", "unknown section 'kkkk"),
])
def test_error_messages_never_echo_unbounded_input(tmp_path, capsys, text, expected):
    params = tmp_path / "params.yaml"
    params.write_text(text)
    r = cli(capsys, "verify", "--params", str(params))
    assert_one_line_error(r, expected)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_params_that_is_not_a_regular_file_is_one_line(tmp_path, kind):
    path = {"fifo": tmp_path / "fifo", "dev-zero": Path("/dev/zero"), "directory": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    r = galot("verify", "--params", str(path), timeout=30)
    assert_one_line_error(r, "not a regular file")


def test_alias_in_a_set_override_is_refused(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("experiment: {name: x}\n")
    r = cli(capsys, "verify", "--params", str(params), "--set", "baselines.strategies=[&a BALD, *a]")
    assert_one_line_error(r, "YAML alias")

"""The service's numeric settings are bounded in one place (atspeed.serve.config.SERVE_BOUNDS): Python
callers of ServeConfig and the `atspeed serve` options refuse the same values."""

import pytest
from click.testing import CliRunner

from atspeed.cli import main
from atspeed.serve.config import SERVE_BOUNDS, ServeConfig

OPTIONS = [name for name in SERVE_BOUNDS if name != "max_body_bytes"]  # the command's numeric options
BELOW = [(name, least - 1) for name, (_, least, _) in SERVE_BOUNDS.items()]


def test_the_defaults_pass():
    ServeConfig().check()


@pytest.mark.parametrize(("name", "value"), BELOW + [("port", 65536)], ids=str)
def test_a_value_out_of_bounds_is_refused_naming_the_option(name, value):
    option, kind = name.replace("_", "-"), "(an integer|a finite number)"
    with pytest.raises(ValueError, match=rf"^--{option} must be {kind} (>=|between) .*got {value}\.$"):
        ServeConfig(**{name: value}).check()


@pytest.mark.parametrize(("name", "value"), [(n, v) for n, v in BELOW if n in OPTIONS] + [("port", 65536)], ids=str)
def test_the_command_refuses_the_same_values(name, value):
    result = CliRunner().invoke(main, ["serve", f"--{name.replace('_', '-')}", str(value)])
    assert result.exit_code == 2
    assert f"--{name.replace('_', '-')}" in result.output and "range" in result.output


@pytest.mark.parametrize("name", OPTIONS)
def test_the_command_has_the_configs_default(name):
    (option,) = [p for p in main.commands["serve"].params if p.name == name]
    assert option.default == ServeConfig.__dataclass_fields__[name].default


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 60_001.0])
def test_a_batch_wait_without_a_sane_end_is_refused(value):
    """An infinite wait would hold a lone request until max_batch others arrive, maybe forever."""
    with pytest.raises(ValueError, match=r"--max-wait-ms must be a finite number between 0 and 60000"):
        ServeConfig(max_wait_ms=value).check()


@pytest.mark.parametrize(("name", "value"), [("max_batch", 2.5), ("max_batch", True), ("port", 80.5), ("threads", "2"),
                                             ("max_k", [5]), ("cpus_per_replica", "1")], ids=str)
def test_a_value_of_the_wrong_type_is_refused_naming_the_option(name, value):
    """A float batch size would only fail inside the batcher, with the request left waiting."""
    with pytest.raises(ValueError, match=rf"^--{name.replace('_', '-')} must be (an integer|a finite number) "):
        ServeConfig(**{name: value}).check()


def test_a_huge_integer_bound_is_a_value_not_a_crash():
    ServeConfig(max_k=10**400).check()

"""`--engine ray` on the command line, without starting Ray: the options reach the Ray service, bad ones
and a missing Ray Serve are one `Error:` line and exit status 2."""

from __future__ import annotations

import importlib
import sys
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from atspeed.cli import main as atspeed

serve_main = importlib.import_module("atspeed.serve.main")  # the module; `atspeed.serve.main` is its main()


@pytest.fixture
def deployed(monkeypatch) -> list:
    """The configs that would have been deployed on Ray."""
    configs: list = []
    monkeypatch.setattr(serve_main, "_ray_serve", lambda: SimpleNamespace(serve_on_ray=configs.append))
    return configs


def test_the_cli_passes_the_ray_options_to_the_service(deployed):
    result = CliRunner().invoke(
        atspeed,
        [
            "serve",
            "--engine",
            "ray",
            "--replicas",
            "3",
            "--gpus-per-replica",
            "0.5",
            "--cpus-per-replica",
            "2",
            "--ray-address",
            "ray://head:10001",
            "--port",
            "9000",
        ],
    )
    assert result.exit_code == 0, result.output
    [config] = deployed
    assert (config.engine, config.replicas, config.gpus_per_replica, config.cpus_per_replica) == ("ray", 3, 0.5, 2)
    assert (config.ray_address, config.port) == ("ray://head:10001", 9000)


def test_python_m_atspeed_serve_takes_the_same_options(deployed):
    with pytest.raises(SystemExit) as exit:
        serve_main.main(["--engine", "ray", "--replicas", "2", "--ray-address", "auto"])
    assert exit.value.code == 0
    assert [(c.engine, c.replicas, c.ray_address) for c in deployed] == [("ray", 2, "auto")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replicas", "0"], "Invalid value for '--replicas': 0 is not in the range x>=1."),
        (["--gpus-per-replica", "-1"], "Invalid value for '--gpus-per-replica': -1.0 is not in the range x>=0."),
    ],
)
def test_bad_ray_options_are_one_error_line(deployed, capsys, args, message):
    with pytest.raises(SystemExit) as exit:
        serve_main.main(["--engine", "ray", *args])
    assert exit.value.code == 2 and deployed == []
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("Error:")] == [f"Error: {message}"]


def test_engine_ray_without_ray_serve_is_one_error_line(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "atspeed.serve.ray_serve", raising=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as if not installed
    with pytest.raises(SystemExit) as exit:
        serve_main.main(["--engine", "ray"])
    assert exit.value.code == 2
    assert (
        capsys.readouterr().err == "Error: --engine ray needs Ray Serve, which is not installed: pip install "
        '"atspeed[ray]"\n'
    )


def test_python_m_atspeed_serve_names_itself_in_its_help(capsys):
    with pytest.raises(SystemExit) as exit:
        serve_main.main(["--help"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith("Usage: python -m atspeed.serve [OPTIONS]")

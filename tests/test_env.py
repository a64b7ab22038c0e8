"""The one environment reader (jobcore.env): the same rules for every setting, every problem at
once, one line each naming the variable."""

from __future__ import annotations

import pytest

from api_client.errors import ClientConfigError
from api_client.recovery import SweepSettings
from api_client.settings import ClientSettings
from jobcore.env import EnvError, EnvReader


def test_unset_and_blank_take_the_default() -> None:
    reader = EnvReader({"BLANK": "  "})
    assert reader.integer("UNSET", 7) == 7
    assert reader.number("BLANK", 1.5) == 1.5
    assert reader.boolean("BLANK", True) is True
    assert reader.text("BLANK", "x") == "x"
    assert reader.optional("BLANK") is None
    assert not reader.is_set("BLANK")
    assert not reader.is_set("UNSET")
    assert EnvReader({"SET": "0"}).is_set("SET")
    reader.check()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("TRUE", True), ("yes", True), ("on", True), ("0", False), ("Off", False)],
)
def test_booleans(raw: str, expected: bool) -> None:
    assert EnvReader({"FLAG": raw}).boolean("FLAG", not expected) is expected


@pytest.mark.parametrize(
    ("method", "raw", "kwargs", "problem"),
    [
        ("integer", "2.5", {}, "N='2.5' is not an integer"),
        ("integer", "0", {"low": 1}, "N=0 is out of range: must be at least 1"),
        ("integer", "21", {"low": 0, "high": 20}, "N=21 is out of range: must be between 0 and 20"),
        ("integer", "0", {"above": 0}, "N=0 is out of range: must be more than 0"),
        ("number", "inf", {}, "N='inf' is not a number"),
        ("number", "nan", {}, "N='nan' is not a number"),
        ("number", "soon", {}, "N='soon' is not a number"),
        ("number", "9", {"high": 5.5}, "N=9 is out of range: must be at most 5.5"),
        ("duration", "-1", {}, "N=-1 is out of range: must be at least 0"),
        ("duration", "0", {"above": 0}, "N=0 is out of range: must be more than 0"),
        ("boolean", "maybe", {}, "N='maybe' is not a boolean (true/false/1/0)"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable_and_the_default_stands_in(
    method: str, raw: str, kwargs: dict[str, float], problem: str
) -> None:
    reader = EnvReader({"N": raw})
    default = {"integer": 3, "number": 2.0, "duration": 4.0, "boolean": False}[method]
    assert getattr(reader, method)("N", default, **kwargs) == default
    assert reader.problems == [problem]
    with pytest.raises(EnvError) as caught:
        reader.check()
    assert caught.value.problems == [problem]


def test_values_in_range_pass() -> None:
    reader = EnvReader({"I": " 20 ", "F": "0.5", "D": "90"})
    assert reader.integer("I", 1, low=0, high=20) == 20
    assert reader.number("F", 1.0, above=0) == 0.5
    assert reader.duration("D", 1.0, high=3600) == 90.0
    reader.check()


def test_every_problem_is_reported_at_once_in_the_callers_error() -> None:
    reader = EnvReader({"PORT": "x", "URL": "ftp://h", "MODE": "Fast"})
    reader.required("MISSING")
    reader.integer("PORT", 1)
    reader.required("URL", prefix=("http://", "https://"))
    reader.choice("MODE", "slow", ("slow", "safe"))
    reader.problem("A must be shorter than B")
    with pytest.raises(ClientConfigError) as caught:
        reader.check(lambda problems: ClientConfigError(" | ".join(problems)))
    assert str(caught.value).split(" | ") == [
        "MISSING must be set",
        "PORT='x' is not an integer",
        "URL must start with http:// or https://",
        "MODE='fast' is not one of slow, safe",
        "A must be shorter than B",
    ]


def test_the_producers_settings_use_the_same_rules_on_one_line() -> None:
    env = {"CLIENT_CONNECT_TIMEOUT_SECONDS": "0", "AWS_MAX_ATTEMPTS": "two"}
    with pytest.raises(ClientConfigError) as caught:
        ClientSettings.from_env(env)
    assert str(caught.value) == (
        "DATABASE_URL must be set; SQS_QUEUE_URL must be set; "
        "CLIENT_CONNECT_TIMEOUT_SECONDS=0 is out of range: must be more than 0; "
        "AWS_MAX_ATTEMPTS='two' is not an integer"
    )


def test_the_sweeps_settings_use_the_same_rules_and_report_every_problem() -> None:
    env = {"SWEEP_MAX_PER_PASS": "1.5", "SWEEP_MAX_PER_SECOND": "-2", "SWEEP_GRACE_SECONDS": "x"}
    with pytest.raises(ClientConfigError) as caught:
        SweepSettings.from_env(env)
    assert str(caught.value).split("; ") == [
        "SWEEP_GRACE_SECONDS='x' is not a number",
        "SWEEP_MAX_PER_PASS='1.5' is not an integer",
        "SWEEP_MAX_PER_SECOND=-2 is out of range: must be more than 0",
    ]
    assert SweepSettings.from_env({"SWEEP_MAX_PER_PASS": "20"}, max_per_pass=5).max_per_pass == 5

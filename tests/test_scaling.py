"""bench/scaling.py: the simulator reads the real Terraform (not a copy), replays the policy it
reads, and shows what items 2 and 3 of issue 11 fixed: no overshoot past ceil(backlog / target),
one cold start from zero, and a rollout at full scale that completes under a sustained backlog."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import hcl2
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import scaling  # noqa: E402


def defaults() -> dict[str, Any]:
    """Variable defaults read here independently of the simulator."""
    with (REPO / "terraform" / "variables.tf").open() as handle:
        parsed = hcl2.load(handle)
    return {
        name.strip('"'): body.get("default")
        for block in parsed["variable"]
        for name, body in block.items()
    }


@pytest.fixture(scope="module")
def after() -> scaling.Policy:
    return scaling.load_policy("after", None, "gpu")


@pytest.fixture(scope="module")
def before() -> scaling.Policy:
    return scaling.load_policy("before", scaling.BEFORE_REF, "gpu", 0.25)


def test_simulator_reads_the_terraform_values(after: scaling.Policy) -> None:
    values = defaults()
    assert values["seconds_per_image"] is None  # per-compute default in main.tf: gpu 0.25
    assert after.seconds_per_image == 0.25
    assert after.target == max(1, math.floor(values["acceptable_wait_seconds"] / 0.25))
    assert after.max_tasks == values["max_tasks"]
    assert after.scale_out_cooldown == values["scale_out_cooldown_seconds"]
    assert after.scale_in_cooldown == values["scale_in_cooldown_seconds"]
    assert after.min_healthy_percent == values["deployment_minimum_healthy_percent"]
    assert after.tracking_expression == "(visible + in_flight) / desired"
    assert after.tracking_metrics["desired"] == "DesiredTaskCount"
    steps = min(values["max_tasks"], values["scale_from_zero_max_tasks"])
    assert after.from_zero_policy.adjustment_type == "ExactCapacity"
    assert [s[2] for s in after.from_zero_policy.steps] == list(range(1, steps + 1))
    assert after.from_zero_policy.steps[1][:2] == (after.target, 2 * after.target)
    assert after.to_zero.periods == values["scale_to_zero_after_minutes"]
    assert scaling.load_policy("cpu", None, "cpu").seconds_per_image == 0.55


def test_the_old_policy_comes_from_git_history(before: scaling.Policy) -> None:
    assert before.tracking_expression == "visible / running"
    assert before.from_zero_policy.adjustment_type == "ChangeInCapacity"
    assert [s[2] for s in before.from_zero_policy.steps] == [1]
    assert before.min_healthy_percent == 100


def test_hcl_expressions_evaluate_like_terraform() -> None:
    ev = scaling.Expressions(
        {"a": 3, "b": None, "compute": "cpu"}, {"gpu": '${var.compute == "gpu"}'}
    )
    assert ev.value("${coalesce(var.b, local.gpu ? 0.25 : 0.55)}") == 0.55
    assert ev.value("${max(1, floor(60 / coalesce(var.b, 0.25)))}") == 240
    assert ev.value("${min(var.a, 10) - 1}") == 2
    assert scaling.metric_math("IF(FILL(desired, 0) == 0, visible, 0)",
                               {"desired": None, "visible": 7.0}) == 7.0  # fmt: skip
    assert scaling.metric_math("visible / running", {"visible": 5.0, "running": 0.0}) is None


def test_no_overshoot_and_one_cold_start(before: scaling.Policy, after: scaling.Policy) -> None:
    kwargs: dict[str, float] = {"cold_start": 300, "metric_delay": 120, "seconds_per_image": 0.25}
    old = scaling.simulate(before, "import 2k after quiet night", **kwargs)
    new = scaling.simulate(after, "import 2k after quiet night", **kwargs)
    assert new.peak_desired == math.ceil(2000 / after.target) < after.max_tasks
    assert old.peak_desired == before.max_tasks  # visible / running kept climbing
    assert new.drain_seconds is not None
    assert old.drain_seconds is not None
    assert new.drain_seconds < old.drain_seconds


def test_rollout_at_full_scale_completes_only_without_renewed_protection(
    before: scaling.Policy, after: scaling.Policy
) -> None:
    def rollout(policy: scaling.Policy, renewed: bool) -> scaling.Rollout:
        return scaling.simulate_rollout(
            tasks=after.max_tasks, instances=after.max_instances,
            min_healthy_percent=policy.min_healthy_percent, protection_renewed=renewed,
            cold_start=300,
        )  # fmt: skip

    assert rollout(before, renewed=True).completed_seconds is None
    assert rollout(after, renewed=True).completed_seconds is None  # protection alone blocks it
    done = rollout(after, renewed=False)
    assert done.completed_seconds is not None
    assert done.completed_seconds <= 20 * 60  # inside deploy.py's default wait
    assert done.lowest_running == math.ceil(after.max_tasks * after.min_healthy_percent / 100)

"""bench/scaling.py: the simulator reads the real Terraform (not a copy; the old policy from its
fixture files), replays the policy it reads with instances, image pulls, instance-hours, target
tracking during its cooldown and SQS's late metrics for an idle queue, and shows: no overshoot past
ceil(backlog / target), one cold start from zero, and a deploy at full scale that completes only
with room for its selfcheck, within deploy.py's rollout wait."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import hcl2
import pytest

from bench import scaling

REPO = Path(__file__).resolve().parents[1]


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
    return scaling.load_policy("before", scaling.BEFORE_DIR, "gpu", 0.25)


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


def test_the_old_policy_comes_from_its_fixture_files(before: scaling.Policy) -> None:
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


GPU = scaling.default_capacity("gpu")


def test_no_overshoot_and_one_cold_start(before: scaling.Policy, after: scaling.Policy) -> None:
    kwargs: dict[str, Any] = {"capacity": GPU, "metric_delay": 120, "seconds_per_image": 0.25}
    old = scaling.simulate(before, "import 2k after quiet night", **kwargs)
    new = scaling.simulate(after, "import 2k after quiet night", **kwargs)
    assert new.peak_desired == math.ceil(2000 / after.target) < after.max_tasks
    assert new.peak_instances == new.peak_desired  # one instance per task, no spare
    assert old.peak_desired == before.max_tasks  # visible / running kept climbing
    assert new.drain_seconds is not None
    assert old.drain_seconds is not None
    assert new.drain_seconds < old.drain_seconds
    assert new.cost < old.cost
    assert {"t", "queue", "desired", "running", "instances"} <= set(new.series[0])


def test_a_cold_start_is_instance_launch_image_pull_and_warm_up() -> None:
    pull = 2490 / 150 + 4300 / 90  # compressed MB over the network, unpacked MB extracted
    assert GPU.pull() == pytest.approx(pull)
    assert GPU.cold_start() == pytest.approx(150 + pull + 20)
    slow_disk = scaling.default_capacity("gpu", gp3_mb_per_s=60)
    assert slow_disk.pull() > GPU.pull()


def test_instances_are_billed_until_managed_scaling_removes_them(after: scaling.Policy) -> None:
    o = scaling.simulate(after, "burst 10k after quiet night", capacity=GPU, metric_delay=120,
                         seconds_per_image=0.25)  # fmt: skip
    busy_hours = 10_000 * 0.25 / 3600  # the work itself, spread over the tasks
    # Each instance lives through its cold start, the 15-minute idle tail before scale-to-zero
    # and the 15 minutes managed scaling waits before removing an idle instance.
    tails = o.peak_instances * (GPU.cold_start() + 2 * 900) / 3600
    assert o.capacity_hours >= busy_hours + tails * 0.9
    assert o.cost == pytest.approx(o.capacity_hours * 0.537)
    assert o.series[-1]["instances"] == 0  # back to zero


def test_target_tracking_scales_out_again_during_its_cooldown(after: scaling.Policy) -> None:
    sim = scaling.Simulation(after, GPU, metric_delay=0, seconds_per_image=0.25)
    sim.set_desired(2)

    def minute(visible: float) -> None:
        sim.now += 60
        point = {"visible": visible, "in_flight": 0.0, "running": 0.0,
                 "desired": float(sim.desired)}  # fmt: skip
        sim.history.append({"t": sim.now, **point, **{f"max_{k}": v for k, v in point.items()}})

    for _ in range(3):
        minute(1000)
    sim.evaluate()
    assert sim.desired == math.ceil(1000 / after.target)  # 2 x 500 / 240 -> 5
    first = sim.now
    minute(2000)  # the next minute: 2000 / 5 = 400 per task, still above the target
    sim.evaluate()
    assert sim.now - first < after.scale_out_cooldown
    assert sim.desired == math.ceil(2000 / after.target)  # again, inside the cooldown


def test_an_idle_queue_publishes_its_first_data_points_15_minutes_late(
    after: scaling.Policy,
) -> None:
    def first_scale_out(idle_hours: float) -> float:
        sim = scaling.Simulation(after, GPU, metric_delay=120, seconds_per_image=0.25)
        sim.now = 8 * 3600.0
        sim.last_activity = sim.now - idle_hours * 3600
        sim.arrive(500)
        started = sim.now
        while sim.desired == 0:
            sim.step()
        return sim.now - started

    assert first_scale_out(7) >= scaling.INACTIVE_METRIC_DELAY
    assert first_scale_out(1) <= 60 + 120 + 60  # a minute, the usual delay, one evaluation


def test_a_deploy_at_full_scale_completes_only_with_room_for_its_selfcheck(
    before: scaling.Policy, after: scaling.Policy
) -> None:
    def deploy(instances: int, **kwargs: Any) -> scaling.Rollout:
        return scaling.simulate_rollout(
            tasks=after.max_tasks, instances=instances, capacity=GPU,
            min_healthy_percent=after.min_healthy_percent, **kwargs,
        )  # fmt: skip

    stuck = deploy(after.max_tasks, gate=True)
    assert stuck.completed_seconds is None
    assert stuck.note == "selfcheck never placed"
    done = deploy(after.max_tasks + 1, gate=True)
    assert done.completed_seconds is not None
    assert done.rollout_seconds is not None
    assert done.completed_seconds == pytest.approx(
        GPU.cold_start() + scaling.SELFCHECK_SECONDS + done.rollout_seconds, abs=scaling.STEP
    )
    assert done.lowest_running == math.ceil(after.max_tasks * after.min_healthy_percent / 100)
    # A rollback to a revision that ran skips the selfcheck: no spare instance needed.
    assert deploy(after.max_tasks).completed_seconds is not None
    # Renewed protection still deadlocks, whatever the room.
    assert deploy(after.max_tasks + 1, protection_renewed=True).completed_seconds is None


def test_the_cuda_layer_of_its_own_shortens_a_dependency_change_rollout(
    after: scaling.Policy,
) -> None:
    def rollout(changed: tuple[float, float]) -> float | None:
        return scaling.simulate_rollout(
            tasks=after.max_tasks, instances=after.max_tasks, capacity=GPU,
            min_healthy_percent=after.min_healthy_percent, changed_mb=changed,
        ).rollout_seconds  # fmt: skip

    one_layer = rollout(scaling.DEPENDENCY_CHANGE_ONE_LAYER)
    split = rollout(scaling.DEPENDENCY_CHANGE)
    assert one_layer is not None
    assert split is not None
    assert split < one_layer


def test_deploy_py_waits_at_least_the_rollout_wait_the_simulator_derives(
    before: scaling.Policy, after: scaling.Policy
) -> None:
    from deploy.ecs.deploy import Timing

    rollouts = scaling.rollout_cases(before, after, GPU)
    slowest = max(r.rollout_seconds for r in rollouts if r.rollout_seconds is not None)
    derived = scaling.rollout_wait_seconds(rollouts)
    assert slowest * 1.5 <= derived <= Timing().timeout


def test_charts_are_written_one_png_per_load(
    before: scaling.Policy, after: scaling.Policy, tmp_path: Path
) -> None:
    outcomes = [
        scaling.simulate(
            policy,
            "import 2k after quiet night",
            capacity=GPU,
            metric_delay=120,
            seconds_per_image=0.25,
        )
        for policy in (before, after)
    ]
    path = tmp_path / "chart.png"
    scaling.chart("import 2k after quiet night", outcomes, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000

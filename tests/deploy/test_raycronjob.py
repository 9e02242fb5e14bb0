"""deploy/kuberay/raycronjob.yaml: KubeRay's RayCronJob runs exactly the standalone RayJob."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tests.deploy.cron import cron_fields, shortest_gap


def test_raycronjob_schedules_the_standalone_rayjob(raycronjob: dict[str, Any], rayjob: dict[str, Any]) -> None:
    assert raycronjob["apiVersion"] == "ray.io/v1"
    spec = raycronjob["spec"]
    # KubeRay 1.6's RayCronJob has only these fields; kubectl's strict validation rejects others.
    assert set(spec) <= {"schedule", "jobTemplate", "suspend"}
    assert isinstance(spec.get("suspend", False), bool)
    assert cron_fields(spec["schedule"])
    assert spec["jobTemplate"] == rayjob["spec"], "raycronjob.yaml's jobTemplate drifted from rayjob.yaml's spec"


def test_raycronjob_runs_cannot_overlap(raycronjob: dict[str, Any]) -> None:
    """It has no concurrency policy, so a build's deadline must end it before the next run."""
    deadline = timedelta(seconds=raycronjob["spec"]["jobTemplate"]["activeDeadlineSeconds"])
    assert shortest_gap(raycronjob["spec"]["schedule"]) > deadline

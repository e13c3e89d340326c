"""Admission on the real API server, with no operator running: `kubectl apply` refuses every spec
a child object (Deployment, Service, PVC, HPA, Job, Secret reference) would refuse, naming the
field, and admits the edge cases that are fine (table: tests/admission_cases.py). A new model
reads as in progress from its first moment (the CRD's status default)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml

from modeldeploy.api import ModelDeployment, ModelDeploymentStatus
from tests import kstatus
from tests.admission_cases import BAD, GOOD, Case
from tests.conftest import Cluster, condition

pytestmark = pytest.mark.cluster


def apply_json(cluster: Cluster, body: dict[str, Any], namespace: str) -> subprocess.CompletedProcess[str]:
    # JSON rather than YAML, so that what the server sees is exactly the case's value.
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(body), check=False)


def test_bad_specs_are_refused_naming_the_field(cluster: Cluster, namespace: str) -> None:
    failures = []
    for case in BAD:
        res = apply_json(cluster, case.body(), namespace)
        if res.returncode == 0:
            failures.append(f"{case.id}: admitted")
            cluster.kubectl("delete", "modeldeployment", case.name, "-n", namespace, "--wait=false")
        elif case.field not in res.stderr:
            failures.append(f"{case.id}: refused without naming {case.field}: {res.stderr.strip()}")
    assert not failures, "\n".join(failures)


def test_good_edge_cases_are_admitted(cluster: Cluster, namespace: str) -> None:
    failures = []
    for case in GOOD:
        res = apply_json(cluster, case.body(), namespace)
        if res.returncode != 0:
            failures.append(f"{case.id}: {res.stderr.strip()}")
            continue
        cluster.kubectl("delete", "modeldeployment", case.name, "-n", namespace, "--wait=true")
    assert not failures, "\n".join(failures)


def test_nan_and_fractions_are_not_integers(cluster: Cluster, namespace: str) -> None:
    # YAML `.nan` has no JSON form: kubectl refuses it before the server sees it.
    text = yaml.safe_dump(Case("nan").body()).replace("spec:\n", "spec:\n  replicas: .nan\n", 1)
    res = cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=text, check=False)
    assert res.returncode != 0
    assert cluster.get("modeldeployment", "m", namespace) is None
    # A fraction reaches the server, which refuses it as not an integer.
    res = apply_json(cluster, Case("half", {"replicas": 0.5}).body(), namespace)
    assert res.returncode != 0
    assert "spec.replicas" in res.stderr


def test_integral_float_is_admitted_as_an_integer(cluster: Cluster, namespace: str) -> None:
    text = yaml.safe_dump(Case("two").body()).replace("spec:\n", "spec:\n  replicas: 2.0\n", 1)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=text)
    obj = cluster.get("modeldeployment", "m", namespace)
    assert obj is not None
    assert obj["spec"]["replicas"] == 2
    ModelDeployment.model_validate(obj)


def test_new_model_reads_in_progress_before_the_operator_sees_it(cluster: Cluster, namespace: str) -> None:
    cluster.apply(Case("fresh").body(), namespace)
    obj = cluster.get("modeldeployment", "m", namespace)
    assert obj is not None
    assert obj["metadata"]["generation"] == 1
    assert obj["status"]["observedGeneration"] == 0
    ready = condition(obj, "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("Unknown", "Pending")
    ModelDeploymentStatus.model_validate(obj["status"])
    ModelDeployment.model_validate(obj)
    res = kstatus.compute(obj)
    assert res.status == kstatus.Status.IN_PROGRESS, res
    assert res.message == "ModelDeployment generation is 1, but latest observed generation is 0"

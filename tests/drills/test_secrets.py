"""Secrets: gated models served from a Hub stand-in of the drill's own, whose tokens are fresh
random values held only in Secrets: one granted (the model becomes Ready), one the Hub knows but
has not granted, one it does not know (both caches fail), and a model without a cache whose pods
take the token from the Secret. The kubelet stand-in runs the real prefetch program for each
prefetch pod. Then every place the operator writes or could leak to is scanned for each token,
raw and base64-encoded: its log (at debug level), its metrics, every object in the namespace but
the Secrets (models with their status, children, Jobs, pods with their termination messages,
Events ...), `modeldeploy render` of each model, the prefetch program's output, and the API
server's audit log of the operator's requests."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import Cluster, condition
from tests.drills.kit import Obj, Operators, Report, mdep, poll, wait_all_converged
from tests.standins.hf_hub import HubStandIn, make_repo, tiny_model_files
from tests.standins.kubelet import Kubelet

KINDS = (
    "modeldeployment,deployment,replicaset,pod,service,poddisruptionbudget,job,persistentvolumeclaim,"
    "configmap,event,serviceaccount,horizontalpodautoscaler,endpoints"
)


def running_prefetch_pods(cluster: Cluster, ns: str) -> list[Obj]:
    return [
        p
        for p in cluster.list("pods", ns, "batch.kubernetes.io/job-name")
        if (p.get("status") or {}).get("phase") == "Running" and p["spec"].get("nodeName")
    ]


def test_secrets(cluster: Cluster, namespace: str, operators: Operators, gpu_pool: int, report: Report,
                 tmp_path: Path) -> None:  # fmt: skip
    ns = namespace
    tokens = {k: f"hf_{secrets.token_hex(16)}" for k in ("granted", "denied", "invalid")}
    repos = [
        make_repo("acme/gated-granted", tiny_model_files(seed=11), gated=True, granted=[tokens["granted"]]),
        make_repo("acme/gated-denied", tiny_model_files(seed=12), gated=True, granted=[tokens["granted"]]),
        make_repo("acme/gated-invalid", tiny_model_files(seed=13), gated=True, granted=[tokens["granted"]]),
    ]
    # The Hub knows "granted" and "denied" (not "invalid"); only "granted" has access.
    with HubStandIn(repos, tokens=(tokens["granted"], tokens["denied"])) as hub:
        env = {"MODELDEPLOY_HF_ENDPOINT": hub.url, "MODELDEPLOY_RESYNC_SECONDS": "5"}
        op = operators.new("secrets", [ns], env, ("--log-level=debug",)).start()
        bodies: list[Obj] = []
        for k, tok in tokens.items():
            cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"hf-{k}"},
                           "stringData": {"token": tok}}, ns)  # fmt: skip
            b = mdep(k, cache={"enabled": True, "accessMode": "ReadWriteOnce", "size": "1Gi"})
            b["spec"]["model"] = {
                "id": f"acme/gated-{k}",
                "tokenSecretRef": {"name": f"hf-{k}", "key": "token"},
            }
            bodies.append(b)
        # No cache: the serving pods read the token from the Secret themselves.
        nocache = mdep("direct")
        nocache["spec"]["model"] = {
            "id": "acme/gated-granted",
            "tokenSecretRef": {"name": "hf-granted", "key": "token"},
        }
        bodies.append(nocache)
        cluster.apply(bodies, ns)
        report.did(
            f"3 Secrets with fresh tokens; 4 gated models (3 cached, 1 not); operator pid {op.pid}, debug log"
        )

        pods, _ = poll(
            "3 prefetch pods Running",
            lambda: (p := running_prefetch_pods(cluster, ns)) and len(p) == 3 and p,
            120,
        )
        outputs: list[str] = []
        for pod in pods:
            kubelet = Kubelet(cluster, tmp_path / pod["metadata"]["name"])
            term = kubelet.run(pod)
            kubelet.report(pod, term)
            outputs += [term.log, term.message]
        report.did(
            "ran the real prefetch program for the 3 prefetch pods (kubelet stand-in) and reported their ends"
        )
        wait_all_converged(cluster, ns, ["granted", "direct"], timeout=120)

        def failed(name: str) -> bool:
            c = condition(cluster.get("mdep", name, ns), "CacheReady")
            return (
                c is not None
                and c["status"] == "False"
                and (cluster.get("mdep", name, ns) or {})["status"]["cache"]["phase"] == "Failed"
            )

        for name in ("denied", "invalid"):
            cluster.wait(f"{name}: cache Failed", lambda n=name: failed(n), timeout=60)  # type: ignore[misc]
        reasons = {
            n: (condition(cluster.get("mdep", n, ns), "CacheReady") or {}).get("reason")
            for n in ("denied", "invalid")
        }
        report.checked(f"granted and direct Ready; denied and invalid caches Failed ({reasons})")

        # The places.
        places: dict[str, str] = {}
        places["operator log"] = op.text()
        places["operator metrics"] = op.metrics()
        objs = json.loads(cluster.kubectl("get", KINDS, "-n", ns, "-o", "json").stdout)["items"]
        for o in objs:
            places[f"{o['kind']} {o['metadata']['name']}"] = json.dumps(o)
            for cs in (o.get("status") or {}).get("containerStatuses") or []:
                for state in ("state", "lastState"):
                    msg = ((cs.get(state) or {}).get("terminated") or {}).get("message")
                    if msg is not None:
                        places[f"termination message of {o['metadata']['name']} ({state})"] = msg
        for b in bodies:
            doc = {**b, "metadata": {"name": b["metadata"]["name"], "namespace": ns}}
            res = subprocess.run([sys.executable, "-m", "modeldeploy.cli", "render", "-f", "-"],
                                 input=yaml.safe_dump(doc), capture_output=True, text=True, timeout=60,
                                 check=True)  # fmt: skip
            places[f"modeldeploy render of {b['metadata']['name']}"] = res.stdout
        for i, out in enumerate(outputs):
            places[f"prefetch program output {i}"] = out
        places["audit log of the operator's requests"] = cluster.lc.audit_log.read_text(errors="replace")

    terminations = sum(1 for k in places if k.startswith("termination message"))
    assert terminations >= 3, f"only {terminations} termination messages found"
    assert sum(1 for o in objs if o["kind"] == "Event") > 0, "no Events to scan"

    def b64(v: str) -> str:
        return base64.b64encode(v.encode()).decode()

    needles = {
        f"{k} token{form}": v for k, tok in tokens.items() for form, v in (("", tok), (" (base64)", b64(tok)))
    }
    # The control: the one place the token belongs holds it in the form searched for.
    secret = cluster.get("secret", "hf-granted", ns) or {}
    assert secret["data"]["token"] == b64(tokens["granted"])
    leaks = [
        f"{needle} in {place}" for place, text in places.items() for needle, v in needles.items() if v in text
    ]
    lines = sum(len(t.splitlines()) for t in places.values())
    report.figure("places scanned", len(places))
    report.figure("lines scanned", lines)
    report.figure("termination messages scanned", terminations)
    report.figure("leaks", len(leaks))
    assert not leaks, "\n".join(leaks)
    report.checked(f"none of the 3 tokens (raw or base64) in any of {len(places)} places ({lines} lines)")
    op.assert_alive()
    assert not op.unhandled(), op.unhandled()[:10]

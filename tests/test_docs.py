"""The documentation's Kubernetes manifests parse and have the shape the cluster page describes."""

from pathlib import Path

import yaml

K8S = Path(__file__).resolve().parents[1] / "docs" / "k8s"


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def test_every_manifest_parses_and_names_its_kind_and_api_version():
    for path in sorted(K8S.glob("*.yaml")):
        for doc in documents(path.name):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path
            assert doc["metadata"].get("name"), path


def test_the_proxy_serves_the_databases_url_from_its_secret_on_the_port_workers_use():
    secret = next(d for d in documents("postgres.yaml") if d["kind"] == "Secret")
    deployment = next(d for d in documents("proxy.yaml") if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "ple-search storage-proxy" in " ".join(container["command"]) and "--port 13000" in " ".join(container["command"])
    ref = container["env"][0]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    service = next(d for d in documents("proxy.yaml") if d["kind"] == "Service")
    assert service["spec"]["ports"][0]["port"] == 13000


def test_the_raycluster_has_a_coordinating_head_and_worker_groups_with_resources():
    (cluster,) = documents("raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert groups["gpu-workers"]["rayStartParams"]["num-gpus"] == "1"
    for group in groups.values():
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert str(limits["cpu"]) == group["rayStartParams"]["num-cpus"]

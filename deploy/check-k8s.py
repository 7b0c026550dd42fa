"""Checks deploy/k8s beyond what the Kubernetes schemas say: the
kustomization lists every manifest (and only files that exist), every
container has probes and resource requests and a memory limit, and the
worker's termination grace covers its shutdown grace plus a job's timeout.
The schemas themselves are checked by kubernetes-validate (see .ci/run).

    python deploy/check-k8s.py deploy/k8s
"""

import pathlib
import sys
import tomllib

import yaml

NOT_LISTED = {"kustomization.yaml", "secret.example.yaml"}


def seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return int(text[:-1]) * units[text[-1]]


def problems(root: pathlib.Path) -> list[str]:
    found = []
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    for name in sorted(listed):
        if not (root / name).is_file():
            found.append(f"kustomization.yaml lists {name}, which does not exist")
    for path in sorted(root.glob("*.yaml")):
        if path.name not in NOT_LISTED and path.name not in listed:
            found.append(f"{path.name} is not in kustomization.yaml")

    docs = [doc for name in sorted(listed) for doc in yaml.safe_load_all((root / name).read_text()) if doc]
    config = next(doc for doc in docs if doc["kind"] == "ConfigMap")
    settings = tomllib.loads(config["data"]["roadie.toml"])
    for doc in docs:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        name = doc["metadata"]["name"]
        pod = doc["spec"]["template"]["spec"]
        for container in pod["containers"]:
            resources = container.get("resources", {})
            if not resources.get("requests") or "memory" not in resources.get("limits", {}):
                found.append(f"{name}/{container['name']}: no resource requests or memory limit")
            if doc["kind"] == "Deployment":
                for probe in ("readinessProbe", "livenessProbe"):
                    if probe not in container:
                        found.append(f"{name}/{container['name']}: no {probe}")
        if name == "roadie-worker":
            # The providers' default request timeout is 30 s.
            needed = seconds(settings["worker"]["shutdown_grace"]) + 30
            if pod.get("terminationGracePeriodSeconds", 30) < needed:
                found.append(f"{name}: terminationGracePeriodSeconds under shutdown_grace + 30 s timeout ({needed})")
    return found


def main() -> int:
    found = problems(pathlib.Path(sys.argv[1]))
    for problem in found:
        print(problem, file=sys.stderr)
    if not found:
        print(f"{sys.argv[1]}: kustomization complete, probes, resources and grace periods set")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

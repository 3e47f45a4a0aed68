#!/usr/bin/env bash
# Deploy whisperd to Cloud Run (one NVIDIA L4 per instance) from deploy/cloudrun/service.yaml.
#
# usage: deploy/cloudrun/deploy.sh [--build] [--public]
#   --build   build deploy/docker/Dockerfile.cuda and push it to IMAGE first (docker)
#   --public  let unauthenticated callers reach the service (whisperd's API keys still apply)
#
# environment:
#   PROJECT   Google Cloud project (default: gcloud's configured project)
#   REGION    a region with L4 GPUs on Cloud Run (default: us-central1)
#   IMAGE     image to deploy (default: REGION-docker.pkg.dev/PROJECT/whisperd/whisperd:latest-cuda)
#   SERVICE   service name (default: whisperd)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/../.." && pwd)"

build=false
public=false
for arg in "$@"; do
    case "${arg}" in
        --build) build=true ;;
        --public) public=true ;;
        -h | --help)
            sed -n '2,12p' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *)
            echo "deploy.sh: unknown argument ${arg} (try --help)" >&2
            exit 2
            ;;
    esac
done

command -v gcloud >/dev/null || {
    echo "deploy.sh: gcloud is not installed: https://cloud.google.com/sdk/docs/install" >&2
    exit 1
}

PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null || true)}"
if [[ -z "${PROJECT}" ]]; then
    echo "deploy.sh: no project: set PROJECT or run 'gcloud config set project ID'" >&2
    exit 1
fi
REGION="${REGION:-us-central1}"
SERVICE="${SERVICE:-whisperd}"
IMAGE="${IMAGE:-${REGION}-docker.pkg.dev/${PROJECT}/whisperd/whisperd:latest-cuda}"

if ! gcloud secrets describe whisperd-api-keys --project "${PROJECT}" >/dev/null 2>&1; then
    cat >&2 <<MSG
deploy.sh: create the Secret Manager secret whisperd-api-keys first (one API key a line):
  openssl rand -hex 32 | gcloud secrets create whisperd-api-keys --project ${PROJECT} --data-file=-
MSG
    exit 1
fi

if [[ "${build}" == true ]]; then
    gcloud auth configure-docker "${IMAGE%%/*}" --quiet
    docker build -f "${root}/deploy/docker/Dockerfile.cuda" -t "${IMAGE}" "${root}"
    docker push "${IMAGE}"
fi

rendered="$(mktemp)"
trap 'rm -f "${rendered}"' EXIT
# The manifest names the image by a placeholder and the service "whisperd".
sed -e "s|ghcr.io/OWNER/whisperd:latest-cuda|${IMAGE}|" \
    -e "s|^  name: whisperd$|  name: ${SERVICE}|" \
    "${here}/service.yaml" >"${rendered}"

gcloud run services replace "${rendered}" --project "${PROJECT}" --region "${REGION}"

if [[ "${public}" == true ]]; then
    gcloud run services add-iam-policy-binding "${SERVICE}" \
        --project "${PROJECT}" --region "${REGION}" \
        --member=allUsers --role=roles/run.invoker
fi

url="$(gcloud run services describe "${SERVICE}" --project "${PROJECT}" --region "${REGION}" \
    --format='value(status.url)')"
echo "whisperd is at ${url}"
echo "  curl -H \"Authorization: Bearer \$KEY\" -F file=@audio.flac -F model=whisper-1 ${url}/v1/audio/transcriptions"

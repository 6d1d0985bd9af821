#!/usr/bin/env bash
# Weekly Delta housekeeping for cron, as the Airflow DAG ugsep_maintain does: VACUUM (files older
# than UGSEP_VACUUM_HOURS, default Delta's 168) and OPTIMIZE of the pipeline's tables, with the
# daily script's job config; one log per run, non-zero exit on failure.
#
#   env: UGSEP_HOME, UGSEP_CONFIG, UGSEP_LOG_DIR, UGSEP_BIN (as ugsep-daily.sh), UGSEP_VACUUM_HOURS
#
# crontab (Sundays 03:00):
#   0 3 * * 0 /opt/ugsep/pipelines/cron/ugsep-maintain.sh >> /opt/ugsep/logs/cron.log 2>&1
set -euo pipefail

home="${UGSEP_HOME:-$(cd "$(dirname "$0")/../.." && pwd)}"
config="${UGSEP_CONFIG:-$home/job.toml}"
log_dir="${UGSEP_LOG_DIR:-$home/logs}"
bin="${UGSEP_BIN:-$home/.venv/bin/ugsep}"
hours="${UGSEP_VACUUM_HOURS:-168}"

mkdir -p "$log_dir"
log="$log_dir/ugsep-maintain_$(date -u +%Y%m%dT%H%M%SZ).log"
cd "$home"
if "$bin" maintain --vacuum-hours "$hours" --optimize --config "$config" >"$log" 2>&1; then
  echo "ugsep-maintain: done; $(grep -E '^\{' "$log" | tail -1)"
else
  rc=$?
  echo "ugsep-maintain: FAILED (exit $rc); last lines of $log:" >&2
  tail -n 20 "$log" >&2
  exit "$rc"
fi

#!/usr/bin/env bash
# Daily ugsep run for cron: the Airflow DAG's pipeline (user stage, materialize to the online
# store, score stage) for yesterday or the date given, with the same job config; one log per
# run, a lock per day so two runs of the same day never overlap, non-zero exit on failure.
#
#   ugsep-daily.sh [YYYY-MM-DD]
#   env: UGSEP_HOME (repo, default: two folders up), UGSEP_CONFIG (default $UGSEP_HOME/job.toml),
#        UGSEP_LOG_DIR (default $UGSEP_HOME/logs), UGSEP_BIN (default $UGSEP_HOME/.venv/bin/ugsep)
#
# crontab (06:15 every day):
#   15 6 * * * /opt/ugsep/pipelines/cron/ugsep-daily.sh >> /opt/ugsep/logs/cron.log 2>&1
set -euo pipefail

home="${UGSEP_HOME:-$(cd "$(dirname "$0")/../.." && pwd)}"
ds="${1:-$(date -u -d yesterday +%F)}"
config="${UGSEP_CONFIG:-$home/job.toml}"
log_dir="${UGSEP_LOG_DIR:-$home/logs}"
bin="${UGSEP_BIN:-$home/.venv/bin/ugsep}"

if ! [[ "$ds" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] || ! date -d "$ds" >/dev/null 2>&1; then
  echo "ugsep-daily: '$ds' is not a date of the form YYYY-MM-DD" >&2
  exit 2
fi
mkdir -p "$log_dir"
log="$log_dir/ugsep-run_${ds}_$(date -u +%Y%m%dT%H%M%SZ).log"
lock="$log_dir/.ugsep-run_${ds}.lock"

exec 9>"$lock"
if ! flock -n 9; then
  echo "ugsep-daily: a run for $ds is already in progress (lock $lock)" >&2
  exit 75
fi

echo "ugsep-daily: ds=$ds config=$config log=$log"
cd "$home"
if "$bin" run --materialize --ds "$ds" --config "$config" >"$log" 2>&1; then
  echo "ugsep-daily: ds=$ds succeeded; $(grep -E '^run ds=' "$log" | tail -1)"
else
  rc=$?
  echo "ugsep-daily: ds=$ds FAILED (exit $rc); last lines of $log:" >&2
  tail -n 20 "$log" >&2
  exit "$rc"
fi

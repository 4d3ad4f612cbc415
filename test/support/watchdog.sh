#!/usr/bin/env bash
# Runs one server process for the test harness and guarantees it does not outlive the test
# process that started it, however that process ends (normal exit, crash, kill -9, Ctrl-C).
#
# Usage: watchdog.sh ORPHAN_SIGNAL LOG_FILE CLEANUP_DIR -- COMMAND [ARGS...]
#   ORPHAN_SIGNAL  signal sent to COMMAND when the owner goes away (KILL for Redis, QUIT for
#                  PostgreSQL: its immediate shutdown, which also ends every backend)
#   LOG_FILE       COMMAND's stdout and stderr are appended here
#   CLEANUP_DIR    removed after COMMAND has exited because its owner went away ('' for none)
#
# Prints COMMAND's pid on the first line of stdout, then exits with COMMAND's status once it
# exits (128+N when killed by signal N). The owner holds our stdin open; when the owner dies
# the kernel closes it, `read` sees EOF and the reader below takes COMMAND down.
set -u
orphan_signal=$1 log_file=$2 cleanup_dir=$3
shift 4
# Background jobs get /dev/null as stdin when job control is off: keep the owner's pipe on fd 3.
exec 3<&0
# bash reports "Killed" and the like on stderr: keep that with the server's own log.
exec 2>>"$log_file"

"$@" </dev/null >>"$log_file" 2>&1 &
child=$!
echo "$child"

(
  while read -r _ <&3; do :; done
  # The owner is gone. Ignore the TERM the main shell sends when COMMAND exits, so the
  # clean-up below always finishes.
  trap '' TERM
  kill -s CONT "$child" 2>/dev/null # a SIGSTOPped server would never act on the signal
  kill -s "$orphan_signal" "$child" 2>/dev/null
  while kill -0 "$child" 2>/dev/null; do sleep 0.05; done
  if [ -n "$cleanup_dir" ]; then rm -rf -- "$cleanup_dir"; fi
) &
reader=$!

wait "$child"
status=$?
kill -s TERM "$reader" 2>/dev/null
exit "$status"

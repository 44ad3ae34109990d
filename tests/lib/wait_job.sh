# Sourced by the shell tests that wait for a background job.
#
# wait_job SECONDS PID: waits for the background job PID, killing it (SIGKILL) once it has run
# SECONDS more; sets rc to its exit status. It polls rather than forking a watchdog subshell:
# bash runs the caller's EXIT trap in a subshell that is killed right after its fork, and the
# tests' EXIT traps remove their working folder.
wait_job() {
  local limit=$1 pid=$2 i
  for ((i = 0; i < limit * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null
  wait "$pid"
  rc=$?
}

#!/usr/bin/env bash
# Runs a fault-injection job and judges it by its output, since such a job ends with MPI_Abort:
#   run_fault_test.sh "required line" ["required line"...] -- mpirun ... parallel_tests --fault-test=X
# Passes when every required text appears and no line reports FAIL.
set -u
required=()
while [[ $# -gt 0 && "$1" != "--" ]]; do required+=("$1"); shift; done
if [[ $# -eq 0 ]]; then echo "usage: $0 TEXT... -- COMMAND..." >&2; exit 2; fi
shift
output=$(timeout 120 "$@" 2>&1)
status=$?
printf '%s\n' "$output"
echo "(job exit status $status)"
ok=1
for text in "${required[@]}"; do
  if ! grep -qF -- "$text" <<<"$output"; then
    echo "run_fault_test: missing \"$text\"" >&2
    ok=0
  fi
done
if grep -q "FAIL" <<<"$output"; then
  echo "run_fault_test: a rank reported FAIL" >&2
  ok=0
fi
if [[ $status -eq 124 ]]; then
  echo "run_fault_test: the job did not end within 120 s" >&2
  ok=0
fi
[[ $ok -eq 1 ]] && echo "run_fault_test: PASS" && exit 0
exit 1

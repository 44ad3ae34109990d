# Sourced by the CLI end-to-end scripts (tests/cli/test_*.sh): a fresh working folder, removed at
# exit, and the pass/fail bookkeeping. The script sets `loom` and `src` first and ends with
# `finish`.
#
#   loom=$1 src=$2
#   source "$src/tests/cli/cli_common.sh"
#   expect_error bad-flag "unknown option --rundir" -- "$loom" train CONFIG --rundir x
#   finish
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp" || exit 1
failures=0
passes=0

pass() { passes=$((passes + 1)); }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# expect_error NAME PATTERN -- COMMAND...: the command must exit 1 and print PATTERN on stderr.
expect_error() {
  local name=$1 pattern=$2
  shift 3
  local err
  err=$("$@" 2>&1 >/dev/null)
  local rc=$?
  if [ "$rc" -ne 1 ]; then fail "$name: exit status $rc, expected 1 ($err)"; return; fi
  if ! grep -qF -- "$pattern" <<<"$err"; then fail "$name: message lacks '$pattern': $err"; return; fi
  pass
}

# expect_ok NAME COMMAND...: the command must succeed; its output is in $tmp/out.txt.
expect_ok() {
  local name=$1
  shift
  if ! "$@" >"$tmp/out.txt" 2>&1; then fail "$name: exit $? $(tail -5 "$tmp/out.txt")"; return 1; fi
  pass
}

finish() {
  echo "$passes passed, $failures failed"
  [ "$failures" -eq 0 ]
}

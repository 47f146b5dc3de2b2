# Sourced by the shell tests (after `set -u` and S=top_srcdir): a check()
# that runs a command and prints "ok - ..." or "not ok - ...", its
# counters, readers for WAV header fields, and the closing summary.
pass=0
fail=0
check() {
    desc=$1
    shift
    if "$@"; then
        pass=$((pass + 1))
        echo "ok - $desc"
    else
        fail=$((fail + 1))
        echo "not ok - $desc"
    fi
}
# wav_u16 FILE OFFSET / wav_u32 FILE OFFSET: a little-endian header field
wav_u16() { od -An -tu2 -j"$2" -N2 "$1" | tr -d ' '; }
wav_u32() { od -An -tu4 -j"$2" -N4 "$1" | tr -d ' '; }
# the last line of a test: the counts, and its exit status
check_summary() {
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ]
}

# Shared by demo.sh and demo-cluster.sh (sourced, not run): how a demo
# prints its headings and the commands it runs.

# Bold headings on a terminal only: no escape codes in a file or a pipe.
if [ -t 1 ]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD='' PLAIN=''; fi
say() { printf '\n%s== %s%s\n' "$BOLD" "$*" "$PLAIN"; }
# quote prints its arguments as a shell would need them typed.
quote() {
  local a out=()
  for a in "$@"; do
    if [[ $a =~ ^[][A-Za-z0-9_./:=@%+,-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  printf '%s' "${out[*]}"
}
# show prints a command as typed, then runs it.
show() { printf '$ %s\n' "$(quote "$@")"; "$@"; }

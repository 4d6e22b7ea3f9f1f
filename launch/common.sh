# Shell helpers shared by the launchers in this directory (sourced, not run).

# The arguments as one line of shell words: plain words as they are, others single-quoted.
quote() {
  local out="" a q="'\\''"
  for a in "$@"; do
    if [[ -n "$a" && "$a" != *[!A-Za-z0-9_./:=@%+,-]* ]]; then out+=" $a"
    else out+=" '${a//\'/$q}'"; fi
  done
  echo "${out# }"
}

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

# sr_jax's tools spell their flags with underscores (absl's style: --gpus_per_node). The
# hyphenated spellings of earlier versions (--gpus-per-node) still work, with a note on
# stderr. Prints the option with its name's hyphens made underscores (a value after '=' is
# left as it is: --srun_arg=--partition=gpu).
underscore_option() {
  local arg=$1 name=${1%%=*} value=""
  [[ "$arg" == *=* ]] && value="=${arg#*=}"
  local body=${name#--}
  local new="--${body//-/_}"
  if [[ "$new" != "$name" ]]; then
    echo "note: $name is now spelled $new (sr_jax's tools use underscores); the old spelling" \
         "still works." >&2
  fi
  echo "${new}${value}"
}

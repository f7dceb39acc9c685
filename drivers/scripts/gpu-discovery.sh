#!/usr/bin/env bash
# GPU discovery script with Flink's contract (FLIP-108):
#
#   gpu-discovery.sh AMOUNT [--enable-coordination-mode | --enable-coordination]
#                           [--coordination-file PATH]
#
# Prints one line with AMOUNT comma-separated GPU indexes (nvidia-smi's index,
# PCI bus order) and exits 0; exits non-zero with a message on stderr when there
# are not enough GPUs or nvidia-smi fails.
#
# Coordination mode makes several processes on one host take disjoint GPUs: the
# coordination file (default /var/tmp/beam-gpu-runner-gpu-coordination) holds
# "INDEX PID" lines for the process that ran this script ($PPID, or
# $GPU_DISCOVERY_HOLDER_PID), updated under flock on PATH.lock; lines of dead
# processes are reclaimed. Flink documents --enable-coordination but its script
# reads --enable-coordination-mode; both are accepted here.
#
# Environment: NVIDIA_SMI overrides the nvidia-smi command (tests use a fake).
set -euo pipefail

die() { echo "gpu-discovery.sh: $*" >&2; exit 1; }

[[ $# -ge 1 ]] || die "usage: gpu-discovery.sh AMOUNT [--enable-coordination-mode] [--coordination-file PATH]"
amount=$1
shift
[[ $amount =~ ^[0-9]+$ ]] && (( amount >= 1 )) || die "AMOUNT must be a whole number >= 1, got '$amount'"

coordination=false
coordination_file=/var/tmp/beam-gpu-runner-gpu-coordination
while [[ $# -gt 0 ]]; do
  case $1 in
    --enable-coordination-mode|--enable-coordination) coordination=true; shift ;;
    --coordination-file) [[ $# -ge 2 ]] || die "--coordination-file needs a PATH"
                         coordination_file=$2; shift 2 ;;
    --coordination-file=*) coordination_file=${1#*=}; shift ;;
    *) die "unknown argument '$1' (known: --enable-coordination-mode, --enable-coordination, --coordination-file PATH)" ;;
  esac
done

smi=${NVIDIA_SMI:-nvidia-smi}
command -v "$smi" >/dev/null 2>&1 || die "'$smi' not found; install the NVIDIA driver or set NVIDIA_SMI"
listing=$("$smi" --query-gpu=index --format=csv,noheader 2>&1) || die "'$smi --query-gpu=index' failed: $listing"
all=()
while read -r line; do
  line=${line//[[:space:]]/}
  [[ -z $line ]] && continue
  [[ $line =~ ^[0-9]+$ ]] || die "unexpected nvidia-smi output line '$line'"
  all+=("$line")
done <<< "$listing"

join() { local IFS=,; echo "$*"; }

if [[ $coordination == false ]]; then
  (( ${#all[@]} >= amount )) || die "asked for $amount GPU(s) but found ${#all[@]} (${all[*]:-none})"
  join "${all[@]:0:amount}"
  exit 0
fi

holder=${GPU_DISCOVERY_HOLDER_PID:-$PPID}
alive() { kill -0 "$1" 2>/dev/null || [[ -d /proc/$1 ]]; }

{
  flock -x 9
  touch "$coordination_file"
  kept=()
  declare -A used=()
  while read -r index pid _; do
    [[ -z ${index:-} || -z ${pid:-} ]] && continue
    if alive "$pid"; then
      kept+=("$index $pid")
      used[$index]=1
    else
      echo "gpu-discovery.sh: reclaiming GPU $index from dead process $pid" >&2
    fi
  done < "$coordination_file"
  chosen=()
  for index in "${all[@]}"; do
    (( ${#chosen[@]} >= amount )) && break
    [[ -n ${used[$index]:-} ]] || chosen+=("$index")
  done
  if (( ${#chosen[@]} < amount )); then
    die "asked for $amount GPU(s) but only ${#chosen[@]} of ${#all[@]} are free (coordination file $coordination_file)"
  fi
  for index in "${chosen[@]}"; do kept+=("$index $holder"); done
  printf '%s\n' "${kept[@]}" > "$coordination_file"
  join "${chosen[@]}"
} 9>>"$coordination_file.lock"

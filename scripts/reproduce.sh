#!/usr/bin/env bash
# Regenerate every study figure in docs/ (docs/results.md lists them) from scratch.
#
#   scripts/reproduce.sh [--force] [--sim-only]
#
# Resumable: each step leaves results/reproduce/<step>.done when it succeeds and is skipped on the
# next run (--force redoes everything). Emulated parts need root (the emulated fabric); as another
# user, or with --sim-only, they are left out and the script says so: the staleness and oracle
# figures then hold simulated points only, and the emulated publish delays, the probe runs and the
# fidelity sweep (with the demo's fidelity figure) are not made. Times (this project's 2-vCPU VM):
# 14.4 min in all as root before the reproduction step (5.2 min on its own) was added, ~20 min with
# it, ~32 min with the emulated publish delays (9.5 min) and probe runs (2.5 min), ~46 min with the
# fidelity sweep (19 min) in place of the separate demo fidelity run (5 min); ~7 min --sim-only.
# A failing step stops the script with its exit code (no retries).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
NETKV=.venv/bin/netkv
STATE=results/reproduce
FORCE=0
SIM_ONLY=0
for a in "$@"; do
  case "$a" in
    --force) FORCE=1 ;;
    --sim-only) SIM_ONLY=1 ;;
    *) echo "reproduce.sh: unknown option '$a' (known: --force, --sim-only)" >&2; exit 2 ;;
  esac
done
[ -x "$PY" ] || { echo "reproduce.sh: no .venv: run scripts/setup.sh first" >&2; exit 2; }
EMULATE=1
if [ "$SIM_ONLY" = 1 ]; then EMULATE=0; elif [ "$(id -u)" != 0 ]; then
  echo "reproduce.sh: not root: the emulated steps are skipped (figures get simulated points only)"
  EMULATE=0
fi
mkdir -p "$STATE" docs/figures
[ "$FORCE" = 1 ] && rm -f "$STATE"/*.done

# name | estimated seconds | needs root (1/0) | command
EMU_POLLS=""
[ "$EMULATE" = 1 ] && EMU_POLLS="--emulate 0.1 0.5 2"
STEPS=(
  "reproduction|330|0|$PY scripts/reproduction.py --out results/reproduction --docs docs"
  "staleness|$([ "$EMULATE" = 1 ] && echo 900 || echo 60)|0|$PY scripts/staleness.py --seeds 1 2 3 4 5 $EMU_POLLS --out results/staleness --docs docs/figures"
  "staleness-delays|570|1|$PY scripts/staleness.py --seeds 1 2 3 4 5 --emulate 0.5 --emulate-delays 0 1 2 --out results/staleness-delays"
  "probes|150|1|$NETKV emulate experiments/staleness.toml --set telemetry.oracle=probe --policy cache_load_aware --policy netkv --out results/probes --no-fidelity"
  "oracles|30|0|ORACLE_EMU"
  "fidelity-sweep|1140|1|$PY scripts/fidelity_sweep.py --out results/fidelity-sweep --docs docs/figures"
)

total=0
for s in "${STEPS[@]}"; do IFS='|' read -r _ est _ _ <<<"$s"; total=$((total + est)); done
done_s=0
skipped=0
start=$(date +%s)
n=${#STEPS[@]}
i=0
for s in "${STEPS[@]}"; do
  IFS='|' read -r name est root cmd <<<"$s"
  i=$((i + 1))
  bar=$(printf '%*s' $((done_s * 30 / total)) '' | tr ' ' '#')
  left=$(( (total - done_s) / 60 ))
  printf '[%-30s] step %d/%d %s (~%d s); ~%d min left\n' "$bar" "$i" "$n" "$name" "$est" "$left"
  if [ -e "$STATE/$name.done" ]; then
    echo "  done before: skipped ($STATE/$name.done; --force redoes it)"
  elif [ "$root" = 1 ] && [ "$EMULATE" = 0 ]; then
    echo "  skipped: needs root (emulated)"
    skipped=$((skipped + 1))
  else
    case "$cmd" in
      ORACLE_EMU)  # the emulated runs of the staleness (counters) and probes steps, when there are any
        mapfile -t runs < <(find results/staleness results/probes -mindepth 1 -maxdepth 2 -type d -name 'staleness-emu-*' 2>/dev/null | sort)
        $PY scripts/oracle_accuracy.py --out results/oracles --docs docs/figures ${runs[@]+--emulated "${runs[@]}"} ;;
      *) $cmd ;;
    esac
    if [ "$name" = staleness-delays ]; then
      cp results/staleness-delays/staleness.png docs/figures/staleness-delays.png
      echo "  copied results/staleness-delays/staleness.png to docs/figures/staleness-delays.png"
    fi
    if [ "$name" = fidelity-sweep ]; then  # the demo's own scatter: its "load x2" condition
      run=$(ls -d results/fidelity-sweep/loadx2/demo-emu-* | sort | tail -1)
      cp "$run/fidelity/transfers.png" docs/figures/fidelity-demo.png
      echo "  copied $run/fidelity/transfers.png to docs/figures/fidelity-demo.png"
    fi
    touch "$STATE/$name.done"
  fi
  done_s=$((done_s + est))
done
echo "reproduce.sh: finished in $(( $(date +%s) - start )) s ($skipped step(s) skipped: need root); figures in docs/figures, numbers under results/ (docs/results.md)"

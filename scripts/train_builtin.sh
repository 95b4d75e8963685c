#!/usr/bin/env bash
# The built-in models' recipe on a 2-core CPU (one torch thread per stage: on the shared 2-core
# development machine that was faster than two): AR from scratch, then PIPO initialised from the
# AR backbone, then on-policy distillation of PIPO from AR. Each stage ends at its step count or
# its time budget (minutes), whichever comes first, with a fully decayed learning rate; the
# budgets add up to 45 minutes. Re-running resumes each stage from its state.pt.
# Usage: scripts/train_builtin.sh [RUN_DIR]
set -euo pipefail
RUN=${1:-runs/builtin}
pipo() { python -m pipo "$@"; }
pipo train --stage ar --out "$RUN/ar" --steps 1800 --time-budget 21 --threads 1
pipo train --stage pipo --out "$RUN/pipo" --init-from "$RUN/ar/final" --steps 2500 \
    --time-budget 18 --threads 1
pipo train --stage opd --out "$RUN/opd" --init-from "$RUN/pipo/final" --teacher "$RUN/ar/final" \
    --steps 150 --time-budget 6 --eval-every 50 --save-every 25 --lr 2e-4 --min-lr 2e-5 \
    --warmup 10 --threads 1

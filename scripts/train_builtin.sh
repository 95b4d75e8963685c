#!/usr/bin/env bash
# The built-in models' recipe on a 2-core CPU (two torch threads per stage: with the machine to
# itself that is ~1.8x faster per step than one): AR from scratch, then PIPO initialised from the
# AR backbone. Each stage ends at its step count or its time budget (minutes), whichever comes
# first, with a fully decayed learning rate; the budgets add up to 42 minutes (AR, PIPO-2 and
# PIPO-4, the last two both initialised from the AR backbone). Re-running resumes
# each stage from its state.pt. The optional on-policy distillation stage (--stage opd, see
# docs/training.md) is not part of the recipe: in a short budget it made the model worse.
# Usage: scripts/train_builtin.sh [RUN_DIR]
set -euo pipefail
RUN=${1:-runs/builtin}
pipo() { python -m pipo "$@"; }
pipo train --stage ar --out "$RUN/ar" --steps 1800 --time-budget 14 --threads 2
pipo train --stage pipo --out "$RUN/pipo" --init-from "$RUN/ar/final" --steps 2500 \
    --time-budget 14 --threads 2
pipo train --stage pipo --fold 4 --out "$RUN/pipo4" --init-from "$RUN/ar/final" --steps 2500 \
    --time-budget 14 --threads 2 --pad-split-max 0.5

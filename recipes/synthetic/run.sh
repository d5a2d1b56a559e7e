#!/usr/bin/env bash
# Synthetic corpus recipe: every stage is resumable and can run on its own.
#   bash recipes/synthetic/run.sh [--stage N] [--stop-stage M] [-j J]
# Stages:
#   0  generate the word-aligned synthetic corpus (lhotse manifests)   -> data/synthetic/manifests
#   1  fbank features + word segments (plain torch export)             -> data/synthetic/segments
#   2  corpus report                                                    -> exp/corpora.json
cd "$(dirname "${BASH_SOURCE[0]}")"
source ../lib.sh
DATA=data/synthetic

if run_stage 0; then
  log "stage 0: synthesize the corpus ($DATA)"
  rescorer prepare synthetic "$DATA" --config config.yaml -j "$num_jobs"
fi
if run_stage 1; then
  log "stage 1: features and word segments"
  rescorer segments "$DATA" --corpus synthetic -j "$num_jobs"
fi
if run_stage 2; then
  log "stage 2: corpus report"
  rescorer report corpora synthetic="$DATA" --out exp/corpora.json
fi

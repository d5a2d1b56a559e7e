#!/usr/bin/env bash
# speechocean762 recipe (real non-native speech; ../shared/data/speechocean762 by default).
#   bash recipes/speechocean762/run.sh [--stage N] [--stop-stage M] [-j J]
#   SO762_DIR=/path/to/speechocean762 bash recipes/speechocean762/run.sh
# Stages:
#   0  manifests with word alignments, speaker-disjoint train/dev     -> data/speechocean762/manifests
#   1  fbank features + word segments                                  -> data/speechocean762/segments
#   2  corpus report                                                    -> exp/corpora.json
cd "$(dirname "${BASH_SOURCE[0]}")"
source ../lib.sh
SO762_DIR="${SO762_DIR:-$REPO/../shared/data/speechocean762}"
DATA=data/speechocean762

if run_stage 0; then
  log "stage 0: manifests from $SO762_DIR"
  if [ -f "$DATA/manifests/speechocean762_cuts_dev.jsonl.gz" ]; then
    log "manifests exist; skipping"
  else
    rescorer prepare speechocean762 "$SO762_DIR" "$DATA" --dev-speaker-fraction 0.2 --seed 0
  fi
fi
if run_stage 1; then
  log "stage 1: features and word segments"
  rescorer segments "$DATA" --corpus speechocean762 -j "$num_jobs"
fi
if run_stage 2; then
  log "stage 2: corpus report"
  rescorer report corpora speechocean762="$DATA" --out exp/corpora.json
fi

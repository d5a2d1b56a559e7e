#!/usr/bin/env bash
# Word-type-rich TTS corpus: pretrain the embedder on ~32k word types, fine-tune it on speechocean762.
#   bash recipes/wordrich/run.sh [--stage N] [--stop-stage M] [-j J]
#   CONFIG=recipes/wordrich/whisper.yaml bash recipes/wordrich/run.sh     (the Whisper frontend throughout)
#   SO762_DIR=/path/to/speechocean762 (default ../shared/data/speechocean762)
# Size (config.yaml, measured on 2 loaded cores): ~15.5k utterances, ~18 h of audio; synthesis
# ~35x real time per core, so ~31 CPU-minutes (~16 min on 2 idle cores); then fbank + segments.
# Stages:
#   0  speechocean762 manifests (the config may keep its dev OOV words out of the corpus), then
#      synthesize the word-rich corpus (list words in carriers + fortunes) -> data/wordrich (plan.json, manifests)
#   1  features + word segments of it (frontend: the config's features)  -> data/wordrich/segments
#   2  speechocean762 segments in the same frontend                       -> data/speechocean762/segments
#   3  corpus report                                                       -> exp/corpora.json
#   4  pretrain the embedder on the word-rich corpus                       -> exp/embeddings_wordrich
#   5  fine-tune it on speechocean762 train (--init-from), and the same
#      training from scratch for comparison (spelling side at 1 x lr)     -> exp/embeddings_so762_{finetuned,scratch}
#   6  evaluate: word-rich test (held-out words and voices); speechocean762
#      dev for the pretrained, fine-tuned and from-scratch embedders      -> exp/embeddings.json
# OOV P@1 against training word types is a benchmark over a corpus of this recipe:
#   python benchmarks/oov_vs_word_types.py --config recipes/wordrich/whisper_types.yaml --data $WR/data/wordrich ...
RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$RECIPE_DIR/../lib.sh"
SO762_DIR="${SO762_DIR:-$REPO/../shared/data/speechocean762}"
DATA=data/wordrich
SO762=data/speechocean762

# segments_for DATA CORPUS: word segments in the config's frontend (no ASR export: embeddings only)
segments_for() {
  cfg features
  rescorer segments "$1" --corpus "$2" -j "$num_jobs" "${CFG[@]}"
}

# train_run OUT SECTION TRAIN DEV [options]: one embedder run from a config section (resumable)
train_run() {
  local out="$1" section="$2" train="$3" dev="$4"; shift 4
  if [ -f "$out/.done" ]; then log "$out is trained; skipping"; return 0; fi
  cfg "$section"
  rescorer train embeddings --train "$train" --dev "$dev" --out "$out" --resume "${CFG[@]}" "$@"
  touch "$out/.done"
}

so762_manifests() {
  if [ ! -f "$SO762/manifests/speechocean762_cuts_dev.jsonl.gz" ]; then
    rescorer prepare speechocean762 "$SO762_DIR" "$SO762" --dev-speaker-fraction 0.2 --seed 0
  fi
}

if run_stage 0; then
  log "stage 0: speechocean762 manifests; synthesize the word-rich corpus ($DATA)"
  so762_manifests
  rescorer prepare wordrich "$DATA" --config "$CONFIG" -j "$num_jobs"
fi
if run_stage 1; then
  log "stage 1: word segments of the word-rich corpus"
  segments_for "$DATA" wordrich
fi
if run_stage 2; then
  log "stage 2: speechocean762 ($SO762_DIR) in the same frontend"
  so762_manifests
  segments_for "$SO762" speechocean762
fi
if run_stage 3; then
  log "stage 3: corpus report"
  rescorer report corpora wordrich="$DATA" speechocean762="$SO762" --out exp/corpora.json
fi
if run_stage 4; then
  log "stage 4: pretrain the embedder on the word-rich corpus"
  train_run exp/embeddings_wordrich embeddings "$DATA/segments/train.pt" "$DATA/segments/dev.pt"
fi
if run_stage 5; then
  log "stage 5: fine-tune on speechocean762 train; the same training from scratch"
  train_run exp/embeddings_so762_finetuned finetune "$SO762/segments/train.pt" "$SO762/segments/dev.pt" \
    --init-from exp/embeddings_wordrich
  train_run exp/embeddings_so762_scratch finetune "$SO762/segments/train.pt" "$SO762/segments/dev.pt" \
    --spelling-lr-scale 1  # no pretrained spelling space to keep: both sides at the full rate
fi
if run_stage 6; then
  log "stage 6: evaluation"
  rescorer evaluate embeddings --model-dir exp/embeddings_wordrich --segments "$DATA/segments/test.pt" \
    --out exp/embeddings.json --name wordrich_test_pretrained
  # speechocean762 dev, IV/OOV by speechocean762 train for all three (the same OOV words)
  for pair in wordrich:so762_dev_pretrained_only so762_finetuned:so762_dev_finetuned so762_scratch:so762_dev_scratch; do
    rescorer evaluate embeddings --model-dir "exp/embeddings_${pair%%:*}" --segments "$SO762/segments/dev.pt" \
      --train-segments "$SO762/segments/train.pt" --out exp/embeddings.json --name "${pair#*:}"
  done
fi

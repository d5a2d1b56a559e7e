#!/usr/bin/env bash
# speechocean762 recipe (real non-native speech; ../shared/data/speechocean762 by default).
#   bash recipes/speechocean762/run.sh [--stage N] [--stop-stage M] [-j J]
#   SO762_DIR=/path/to/speechocean762 bash recipes/speechocean762/run.sh
# Config: whisper_l34.yaml (Whisper layers 3+4, no pretraining run) unless CONFIG names another,
# e.g. fbank.yaml (80-bin fbank; read its header first) or a whisper_wordrich*.yaml.
# The corpus has train and dev only: rescoring scales are cross-validated over dev speakers
# (tuned on one half, reported on the other, and the other way round).
# Stages:
#   0  manifests with word alignments, speaker-disjoint train/dev     -> data/speechocean762/manifests
#   1  features (by config) + word segments + ASR utterance export    -> data/speechocean762/segments, exp/asr_data
#   2  corpus report                                                    -> exp/corpora.json
#   3  LM (fortunes + train transcripts minus dev) and HLG graph        -> exp/lang
#   4  train the embedder and the CTC model, then the attention model  -> exp/embeddings, exp/ctc, exp/attention
#   5  decode dev (CTC lattices; attention beam and rescoring)          -> exp/decode_dev_{ctc,attention}
#   6  pocketsphinx lattices of dev (the external decoder)              -> exp/pocketsphinx
#   7  rescore CTC and pocketsphinx lattices (2-fold over speakers),
#      with OOV recovery from the large and the dev context word list   -> exp/word_lists, exp/wer.json
#      and Whisper's list words spotted into the rescored best paths    -> exp/whisper, exp/wer.json
#   8  WER table                                                        -> exp/wer.json (printed)
RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEFAULT_CONFIG=whisper_l34.yaml
source "$RECIPE_DIR/../lib.sh"
SO762_DIR="${SO762_DIR:-$REPO/../shared/data/speechocean762}"
# POCKETSPHINX=0 leaves out the external decoder (stage 6 and its rescoring; its 500 dev
# utterances take about 30 minutes on 2 loaded cores)
POCKETSPHINX="${POCKETSPHINX:-1}"
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
  log "stage 1: features, word segments, ASR utterances"
  features "$DATA" speechocean762
fi
if run_stage 2; then
  log "stage 2: corpus report"
  corpus_report "$DATA" speechocean762
fi
if run_stage 3; then
  log "stage 3: language model and decoding graph"
  build_lang --speechocean762 "$DATA"
fi
if run_stage 4; then
  log "stage 4: training (embedder + CTC, then attention)"
  train_models "$DATA"
fi
if run_stage 5; then
  log "stage 5: decoding dev"
  decode ctc dev ctc_greedy,hlg_1best,lattice_oracle --word-lattices --save-ctc-log-probs
  decode attention dev attention_beam,hlg_attention_rescore
fi
if run_stage 6 && [ "$POCKETSPHINX" = 1 ]; then
  log "stage 6: pocketsphinx lattices of dev"
  if [ -f exp/pocketsphinx/summary.json ]; then log "exp/pocketsphinx exists; skipping"; else
    rescorer lattices pocketsphinx "$DATA/manifests/speechocean762_cuts_dev.jsonl.gz" exp/pocketsphinx -j "$num_jobs"
  fi
fi
if run_stage 7; then
  log "stage 7: embedding rescoring (scales cross-validated over dev speakers)"
  if [ ! -f exp/.rescored_ctc ]; then
    tune rescore speechocean762_dev --cross-validate --dev-lattices exp/decode_dev_ctc/word_lattices.pt \
      --dev-features exp/asr_data/dev.pt --decode-metrics exp/decode_dev_ctc/metrics.json --attention-model-dir exp/attention
    touch exp/.rescored_ctc
  fi
  word_lists dev
  lists=(--word-list exp/word_lists/large.txt --context-list exp/word_lists/context_dev.txt)
  if [ ! -f exp/.rescored_ctc_oov ]; then
    tune rescore_oov speechocean762_dev --cross-validate --dev-lattices exp/decode_dev_ctc/word_lattices.pt \
      --dev-features exp/asr_data/dev.pt --decode-metrics exp/decode_dev_ctc/metrics.json "${lists[@]}"
    touch exp/.rescored_ctc_oov
  fi
  if [ "$POCKETSPHINX" = 1 ] && [ ! -f exp/.rescored_pocketsphinx ]; then
    tune rescore_pocketsphinx speechocean762_dev --cross-validate --prefix pocketsphinx_ \
      --dev-lattices exp/pocketsphinx/lattices --dev-features exp/asr_data/dev.pt --decode-metrics exp/pocketsphinx/summary.json \
      "${lists[@]}"
    touch exp/.rescored_pocketsphinx
  fi
  scorer="$(ctc_scorer_args dev)"  # an assignment, so that a config it refuses stops the recipe
  # shellcheck disable=SC2086  # one option per word
  rescore_ctc speechocean762_dev --cross-validate --dev-lattices exp/decode_dev_ctc/word_lattices.pt \
    --dev-features exp/asr_data/dev.pt --decode-metrics exp/decode_dev_ctc/metrics.json $scorer
  if [ "$POCKETSPHINX" = 1 ]; then  # pocketsphinx's arcs scored by the project's CTC model on the same audio
    scorer="$(ctc_scorer_args)"
    # shellcheck disable=SC2086
    CTC_SECTION=rescore_ctc_pocketsphinx CTC_DONE=exp/.rescored_pocketsphinx_ctc_fusion rescore_ctc speechocean762_dev --cross-validate --prefix pocketsphinx_ \
      --dev-lattices exp/pocketsphinx/lattices --dev-features exp/asr_data/dev.pt --decode-metrics exp/pocketsphinx/summary.json \
      $scorer
  fi
  # Whisper's own transcript of dev, and its list words spotted into the rescored best paths
  transcribe_splits "$DATA" speechocean762 dev
  rescore_whisper speechocean762_dev --save-config --cross-validate --dev-lattices exp/decode_dev_ctc/word_lattices.pt \
    --dev-features exp/asr_data/dev.pt --decode-metrics exp/decode_dev_ctc/metrics.json \
    --dev-transcripts exp/whisper/transcripts_dev.jsonl
  if [ "$POCKETSPHINX" = 1 ]; then  # ... and into the rescored best paths of pocketsphinx's lattices
    WHISPER_SECTION=rescore_whisper_pocketsphinx WHISPER_DONE=exp/.rescored_pocketsphinx_whisper \
      rescore_whisper speechocean762_dev --cross-validate --prefix pocketsphinx_ --dev-lattices exp/pocketsphinx/lattices \
      --dev-features exp/asr_data/dev.pt --decode-metrics exp/pocketsphinx/summary.json \
      --dev-transcripts exp/whisper/transcripts_dev.jsonl
  fi
fi
if run_stage 8; then
  log "stage 8: results"
  ps=()
  [ "$POCKETSPHINX" = 1 ] && ps=(--pocketsphinx exp/pocketsphinx/summary.json)
  wer_table speechocean762_dev --decode exp/decode_dev_ctc/metrics.json --decode exp/decode_dev_attention/metrics.json "${ps[@]}"
fi

#!/usr/bin/env bash
# Synthetic corpus recipe, end to end: every stage is resumable and can run on its own.
#   bash recipes/synthetic/run.sh [--stage N] [--stop-stage M] [-j J]      (CONFIG=other.yaml to change sizes)
# Stages:
#   0  generate the word-aligned synthetic corpus (lhotse manifests)   -> data/synthetic/manifests
#   1  fbank features + word segments + ASR utterance export           -> data/synthetic/segments, exp/asr_data
#   2  corpus report                                                    -> exp/corpora.json
#   3  LM (fortunes minus dev/test sentences) and HLG decoding graph    -> exp/lang
#   4  train the embedder and the CTC model (side by side), then the
#      joint CTC/attention model                                        -> exp/embeddings, exp/ctc, exp/attention
#   5  decode dev (DEV_UTTERANCES of them, default 0: all; recovery's keep-or-abstain decision
#      needs dev's OOV tokens) and test: CTC greedy, HLG 1-best, lattice oracle,
#      word lattices; attention beam search and attention rescoring     -> exp/decode_{dev,test}_{ctc,attention}
#   6  rescore the CTC lattices (scales tuned on dev, applied to test)  -> exp/wer.json, exp/embeddings/rescorer.json
#      and OOV recovery from the large list and the context lists     -> exp/word_lists, exp/wer.json
#      and Whisper's list words spotted into the rescored best paths   -> exp/whisper, exp/wer.json
#   7  WER table                                                        -> exp/wer.json (printed)
RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$RECIPE_DIR/../lib.sh"
DATA=data/synthetic

if run_stage 0; then
  log "stage 0: synthesize the corpus ($DATA)"
  rescorer prepare synthetic "$DATA" --config "$CONFIG" -j "$num_jobs"
fi
if run_stage 1; then
  log "stage 1: features, word segments, ASR utterances"
  features "$DATA" synthetic
fi
if run_stage 2; then
  log "stage 2: corpus report"
  corpus_report "$DATA" synthetic
fi
if run_stage 3; then
  log "stage 3: language model and decoding graph"
  build_lang --synthetic-plan "$DATA/plan.json"
fi
if run_stage 4; then
  log "stage 4: training (embedder + CTC, then attention)"
  train_models "$DATA"
fi
if run_stage 5; then
  log "stage 5: decoding"
  decode_dev_test "${DEV_UTTERANCES:-0}"
fi
if run_stage 6; then
  log "stage 6: embedding rescoring of the CTC lattices"
  rescore_test synthetic
  rescore_oov_test synthetic
  scorer="$(ctc_scorer_args dev test)"  # an assignment, so that a config it refuses stops the recipe
  # shellcheck disable=SC2086  # one option per word
  rescore_ctc synthetic --dev-lattices exp/decode_dev_ctc/word_lattices.pt --dev-features exp/asr_data/dev.pt \
    --test-lattices exp/decode_test_ctc/word_lattices.pt --test-features exp/asr_data/test.pt \
    --decode-metrics exp/decode_test_ctc/metrics.json $scorer
  transcribe_splits "$DATA" synthetic dev test
  rescore_whisper synthetic --save-config --dev-lattices exp/decode_dev_ctc/word_lattices.pt --dev-features exp/asr_data/dev.pt \
    --test-lattices exp/decode_test_ctc/word_lattices.pt --test-features exp/asr_data/test.pt \
    --decode-metrics exp/decode_test_ctc/metrics.json \
    --dev-transcripts exp/whisper/transcripts_dev.jsonl --test-transcripts exp/whisper/transcripts_test.jsonl
fi
if run_stage 7; then
  log "stage 7: results"
  wer_table synthetic --decode exp/decode_test_ctc/metrics.json --decode exp/decode_test_attention/metrics.json
fi

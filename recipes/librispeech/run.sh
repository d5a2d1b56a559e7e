#!/usr/bin/env bash
# LibriSpeech recipe: read speech with the public word alignments (the same stages as the
# synthetic and speechocean762 recipes; the shared steps are in recipes/lib.sh).
#   bash recipes/librispeech/run.sh [--stage N] [--stop-stage M] [-j J]
#   LIBRISPEECH_DIR=/data/LibriSpeech bash recipes/librispeech/run.sh
#   LIBRISPEECH_ALIGNMENTS=/data/librispeech-alignments   (default: inside LIBRISPEECH_DIR)
# The parts that make train/dev/test, the LM text and the model sizes are in config.yaml
# (sized for one GPU: training runs on CUDA when torch sees it; decoding needs k2).
# Stages:
#   0  download the parts that are missing (lhotse; word alignments need gdown), then
#      manifests with word alignments, parts merged into train/dev/test -> data/librispeech/manifests
#   1  fbank features + word segments + ASR utterance export           -> data/librispeech/segments, exp/asr_data
#   2  corpus report                                                    -> exp/corpora.json
#   3  LM (train transcripts minus dev/test sentences, + config lang.lm_text;
#      or an existing ARPA: config lang.arpa) and HLG graph              -> exp/lang
#   4  train the embedder and the CTC model, then the attention model  -> exp/embeddings, exp/ctc, exp/attention
#   5  decode dev (DEV_UTTERANCES of them, default 500) and test       -> exp/decode_{dev,test}_{ctc,attention}
#   6  rescore the CTC lattices (scales tuned on dev, applied to test)  -> exp/wer.json, exp/embeddings/rescorer.json
#   7  WER table                                                        -> exp/wer.json (printed)
RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$RECIPE_DIR/../lib.sh"
LIBRISPEECH_DIR="$(from_caller "${LIBRISPEECH_DIR:-download/LibriSpeech}")"
DATA=data/librispeech

if run_stage 0; then
  log "stage 0: manifests from $LIBRISPEECH_DIR"
  if [ -f "$DATA/manifests/librispeech_cuts_test.jsonl.gz" ]; then log "manifests exist; skipping"; else
    cfg librispeech
    missing=()  # the parts named by the config's --train=/--dev=/--test= that are not on disk
    for opt in "${CFG[@]}"; do
      IFS=, read -ra parts <<< "${opt#*=}"
      for p in "${parts[@]}"; do [ -d "$LIBRISPEECH_DIR/$p" ] || missing+=("$p"); done
    done
    if [ ${#missing[@]} -gt 0 ]; then
      log "downloading ${missing[*]} into $(dirname "$LIBRISPEECH_DIR")"
      rescorer download librispeech "$(dirname "$LIBRISPEECH_DIR")" --parts "$(IFS=,; echo "${missing[*]}")"
    fi
    ali=()
    [ -n "${LIBRISPEECH_ALIGNMENTS:-}" ] && ali=(--alignments-dir "$(from_caller "$LIBRISPEECH_ALIGNMENTS")")
    rescorer prepare librispeech "$LIBRISPEECH_DIR" "$DATA" "${ali[@]}" "${CFG[@]}" -j "$num_jobs"
  fi
fi
if run_stage 1; then
  log "stage 1: features, word segments, ASR utterances"
  features "$DATA" librispeech
fi
if run_stage 2; then
  log "stage 2: corpus report"
  corpus_report "$DATA" librispeech
fi
if run_stage 3; then
  log "stage 3: language model and decoding graph"
  cfg lang
  case " ${CFG[*]} " in  # an ARPA in the config replaces the transcripts as the LM source
    *" --arpa="*) build_lang "${CFG[@]}" ;;
    *) build_lang --transcripts "$DATA" --corpus librispeech "${CFG[@]}" ;;
  esac
fi
if run_stage 4; then
  log "stage 4: training (embedder + CTC, then attention)"
  train_models "$DATA"
fi
if run_stage 5; then
  log "stage 5: decoding"
  decode_dev_test "${DEV_UTTERANCES:-500}"
fi
if run_stage 6; then
  log "stage 6: embedding rescoring of the CTC lattices"
  rescore_test librispeech
fi
if run_stage 7; then
  log "stage 7: results"
  wer_table librispeech --decode exp/decode_test_ctc/metrics.json --decode exp/decode_test_attention/metrics.json
fi

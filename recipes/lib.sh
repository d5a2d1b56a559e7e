# Shared recipe plumbing, sourced by recipes/<corpus>/run.sh after it sets RECIPE_DIR (logic
# lives in the package; this parses --stage/--stop-stage, sets up the environment, logs,
# and holds the stages every recipe shares). Recipes call the package only through
# `rescorer <verb>` (the function below).
# The recipe works in WORKDIR (default: its own directory): data/ and exp/ go there.
# CONFIG (default: RECIPE_DIR/$DEFAULT_CONFIG, which a recipe may set before sourcing this file;
# else RECIPE_DIR/config.yaml) and other paths given relative are read from the directory the
# recipe was started in.
set -euo pipefail
shopt -s inherit_errexit
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CALLER_DIR="$(pwd)"
# from_caller PATH: PATH as given by the user (relative to where the recipe was started)
from_caller() { case "$1" in /*) echo "$1" ;; *) echo "$CALLER_DIR/$1" ;; esac; }
CONFIG="$(from_caller "${CONFIG:-$RECIPE_DIR/${DEFAULT_CONFIG:-config.yaml}}")"
[ -f "$CONFIG" ] || { echo "$0: no config file $CONFIG" >&2; exit 2; }
WORKDIR="$(from_caller "${WORKDIR:-$RECIPE_DIR}")"
mkdir -p "$WORKDIR"
cd "$WORKDIR"
stage=0
stop_stage=100
num_jobs=2
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage="$2"; shift 2 ;;
    --stop-stage) stop_stage="$2"; shift 2 ;;
    --num-jobs|-j) num_jobs="$2"; shift 2 ;;
    -h|--help) echo "usage: $0 [--stage N] [--stop-stage M] [--num-jobs J]"; exit 0 ;;
    *) echo "$0: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p exp/log
log() { echo "$(date '+%H:%M:%S') [$(basename "$(pwd)")] $*" | tee -a exp/log/run.log >&2; }
run_stage() { [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]; }
bash "$REPO/scripts/setup.sh" >/dev/null
PY="$REPO/.envs/k2/bin/python"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
rescorer() { "$PY" -m rescorer "$@"; }

# ---------------------------------------------------------------- shared stages
# Every function below is one resumable step that calls `rescorer <verb>`; the recipes only
# choose the corpus, the splits and the config (CONFIG, one file per recipe).

# cfg SECTION: the config section's options as the array CFG (rescorer config-flags)
cfg() {
  local out
  out="$(rescorer config-flags "$CONFIG" "$1")"
  CFG=()
  if [ -n "$out" ]; then mapfile -t CFG <<< "$out"; fi
}

# features DATA CORPUS: frontend frames (config section `features`: frontend fbank, the
# default, or whisper with whisper_layers / whisper_model) + word segments (DATA/segments)
# and the utterance export for ASR and rescoring (exp/asr_data)
features() {
  cfg features
  local frontend=fbank a
  for a in "${CFG[@]}"; do case "$a" in --frontend=*) frontend="${a#--frontend=}" ;; esac; done
  rescorer segments "$1" --corpus "$2" -j "$num_jobs" "${CFG[@]}"
  rescorer export-asr "$1" --corpus "$2" --out exp/asr_data --frontend "$frontend"
}

# corpus_report DATA CORPUS: split statistics -> exp/corpora.json
corpus_report() {
  rescorer report corpora "$2=$1" --out exp/corpora.json
}

# build_lang LM-SOURCE-OPTIONS...: LM + HLG (rescorer graphs) -> exp/lang
build_lang() {
  if [ -f exp/lang/HLG.pt ]; then log "exp/lang exists; skipping"; return 0; fi
  rescorer graphs "$@" --out exp/lang
}

# train_embedder DATA: acoustic + letter-n-gram encoders -> exp/embeddings (resumable)
train_embedder() {
  cfg embeddings
  rescorer train embeddings --train "$1/segments/train.pt" --dev "$1/segments/dev.pt" \
    --out exp/embeddings --resume "${CFG[@]}"
}

# train_asr MODEL (ctc|attention): letter ASR model -> exp/MODEL (resumable)
train_asr() {
  cfg "$1"
  rescorer train asr --model "$1" --train exp/asr_data/train.pt --dev exp/asr_data/dev.pt \
    --out "exp/$1" --resume "${CFG[@]}"
}

# train_models DATA: the embedder and the CTC model side by side (one core each when -j >= 2),
# then the attention model (initialised from the CTC encoder, see the config)
train_models() {
  local pid=""
  if [ ! -f exp/embeddings/.done ]; then
    if [ "$num_jobs" -ge 2 ]; then
      log "training the embedder in the background (log: exp/log/train_embeddings.log)"
      ( OMP_NUM_THREADS=1 train_embedder "$1" > exp/log/train_embeddings.log 2>&1 && touch exp/embeddings/.done ) &
      pid=$!
    else
      train_embedder "$1" && touch exp/embeddings/.done
    fi
  fi
  if [ ! -f exp/ctc/.done ]; then
    log "training the CTC model"
    OMP_NUM_THREADS=$(( num_jobs >= 2 ? 1 : OMP_NUM_THREADS )) train_asr ctc && touch exp/ctc/.done
  fi
  if [ -n "$pid" ]; then
    log "waiting for the embedder"
    wait "$pid" || { log "embedder training failed: see exp/log/train_embeddings.log"; return 1; }
  fi
  if [ ! -f exp/attention/.done ]; then
    log "training the attention model"
    train_asr attention && touch exp/attention/.done
  fi
}

# ctc_scorer_args SPLIT...: the CTC methods' model: the CTC run's checkpoint of lowest dev loss
# (exp/ctc/best_loss.pt, kept beside its best.pt by CER: calibrated log-probs where best.pt
# overfits the loss; README, issue 16) where the config's `ctc_scorer` section asks for it
# (`checkpoint: best_loss`), else exp/ctc's best.pt with the decoder's stored log-probs of SPLIT...
ctc_scorer_args() {
  cfg ctc_scorer
  if [ "${#CFG[@]}" -eq 0 ]; then
    echo "--ctc-model-dir=exp/ctc"
    stored_log_probs "$@"
    return 0
  fi
  if [ "${CFG[*]}" != "--checkpoint=best_loss" ]; then
    log "config section ctc_scorer: expected only 'checkpoint: best_loss', got ${CFG[*]}"
    return 1
  fi
  [ -f exp/ctc/best_loss.pt ] || { log "exp/ctc has no best_loss.pt (a CTC run trained before it was kept: retrain, or drop the ctc_scorer section)"; return 1; }
  echo "--ctc-model-dir=exp/ctc/best_loss.pt"
}

# decode MODEL SPLIT METHODS [options]: k2 decoding -> exp/decode_SPLIT_MODEL (skipped when done)
decode() {
  local model="$1" split="$2" methods="$3"; shift 3
  local out="exp/decode_${split}_${model}"
  if [ -f "$out/metrics.json" ]; then log "$out exists; skipping"; return 0; fi
  cfg decode
  rescorer decode --model-dir "exp/$model" --data "exp/asr_data/$split.pt" --lang-dir exp/lang \
    --out "$out.tmp" --methods "$methods" --train-data exp/asr_data/train.pt "${CFG[@]}" "$@"
  rm -rf "$out" && mv "$out.tmp" "$out"
}

# tune SECTION CORPUS [options]: tune the rescoring scales on dev (grid from the config
# SECTION), report on held-out data -> exp/wer.json, save the tuned scales with the embedder
# (exp/embeddings/rescorer.json)
tune() {
  local section="$1" corpus="$2"; shift 2
  cfg "$section"
  rescorer tune --corpus "$corpus" --model-dir exp/embeddings \
    --train-data exp/asr_data/train.pt --out exp/wer.json --save-config "${CFG[@]}" "$@"
}

# stored_log_probs SPLIT...: --SPLIT-ctc-log-probs options for the decoder's stored CTC log-probs
# (decode --save-ctc-log-probs), so that the CTC methods do not run the model again; none for a
# split decoded before they were stored (the model then runs)
stored_log_probs() {
  local split
  for split in "$@"; do
    [ -f "exp/decode_${split}_ctc/ctc_log_probs.pt" ] && echo "--${split}-ctc-log-probs=exp/decode_${split}_ctc/ctc_log_probs.pt"
  done
  return 0
}

# rescore_ctc CORPUS [options]: CTC word spotting and embedding + CTC fusion (rescorer tune
# --methods ctc_word_spotting,lattice_ctc_word_spotting,awe_ctc_rescore) with the CTC model of
# ctc_scorer_args, when the config has a
# `rescore_ctc` section (its keys: methods, word_list, grids); skipped otherwise. Scales are not
# saved with the embedder (the embedding methods' tuned scales stay in rescorer.json).
# Another decoder's lattices (e.g. --prefix pocketsphinx_) take their own config section
# (CTC_SECTION, default rescore_ctc) and marker of a finished run (CTC_DONE, default
# exp/.rescored_ctc_fusion).
rescore_ctc() {
  local corpus="$1"; shift
  local section="${CTC_SECTION:-rescore_ctc}" done="${CTC_DONE:-exp/.rescored_ctc_fusion}"
  cfg "$section"
  if [ "${#CFG[@]}" -eq 0 ]; then log "no $section section in $CONFIG: CTC word spotting / fusion skipped"; return 0; fi
  if [ -f "$done" ]; then log "CTC methods done (rm $done to redo)"; return 0; fi
  rescorer tune --corpus "$corpus" --model-dir exp/embeddings \
    --train-data exp/asr_data/train.pt --out exp/wer.json "${CFG[@]}" "$@"
  touch "$done"
}

# decode_dev_test DEV_LIMIT: CTC lattices of dev (its first DEV_LIMIT utterances; 0: all,
# they only tune a few scales) and of test; the attention model on test
decode_dev_test() {
  decode ctc dev ctc_greedy,hlg_1best,lattice_oracle --word-lattices --save-ctc-log-probs --max-utterances "$1"
  decode ctc test ctc_greedy,hlg_1best,lattice_oracle --word-lattices --save-ctc-log-probs
  decode attention test attention_beam,hlg_attention_rescore
}

# rescore_test CORPUS: embedding rescoring of the test CTC lattices, scales tuned on dev
rescore_test() {
  if [ -f exp/.rescored ]; then log "already rescored (rm exp/.rescored to redo)"; return 0; fi
  tune rescore "$1" --dev-lattices exp/decode_dev_ctc/word_lattices.pt --dev-features exp/asr_data/dev.pt \
    --test-lattices exp/decode_test_ctc/word_lattices.pt --test-features exp/asr_data/test.pt \
    --decode-metrics exp/decode_test_ctc/metrics.json --attention-model-dir exp/attention
  touch exp/.rescored
}

# word_lists SPLIT...: OOV recovery's word lists (rescorer word-lists) -> exp/word_lists/large.txt
# (Debian word list + the corpus's words) and context_SPLIT.txt (the split's OOV words + 10 matched
# distractors each)
word_lists() {
  if [ -f exp/word_lists/word_lists.json ]; then log "exp/word_lists exists; skipping"; return 0; fi
  local args=() split
  for split in "$@"; do args+=(--split "$split=exp/asr_data/$split.pt"); done
  rescorer word-lists --train-data exp/asr_data/train.pt "${args[@]}" --out-dir exp/word_lists.tmp
  rm -rf exp/word_lists && mv exp/word_lists.tmp exp/word_lists
}

# rescore_oov_test CORPUS: OOV recovery from the large list and from each split's context list
# (grid from the config section rescore_oov, abstention margin included), tuned on dev, on test
rescore_oov_test() {
  if [ -f exp/.rescored_oov ]; then log "OOV recovery already rescored (rm exp/.rescored_oov to redo)"; return 0; fi
  word_lists dev test
  tune rescore_oov "$1" --dev-lattices exp/decode_dev_ctc/word_lattices.pt --dev-features exp/asr_data/dev.pt \
    --test-lattices exp/decode_test_ctc/word_lattices.pt --test-features exp/asr_data/test.pt \
    --decode-metrics exp/decode_test_ctc/metrics.json --word-list exp/word_lists/large.txt \
    --context-list exp/word_lists/context_dev.txt --test-context-list exp/word_lists/context_test.txt
  touch exp/.rescored_oov
}

# transcribe_splits DATA CORPUS SPLIT...: Whisper's 1-best of each split's cuts (config section
# `transcribe`: beam_size, whisper_model) -> exp/whisper/transcripts_SPLIT.jsonl (resumable: a
# killed run goes on where it stopped); skipped without that section
transcribe_splits() {
  local data="$1" corpus="$2" split; shift 2
  cfg transcribe
  if [ "${#CFG[@]}" -eq 0 ]; then log "no transcribe section in $CONFIG: Whisper transcripts skipped"; return 0; fi
  for split in "$@"; do
    if [ -f "exp/whisper/.done_$split" ]; then continue; fi
    rescorer transcribe "$data/manifests/${corpus}_cuts_${split}.jsonl.gz" "exp/whisper/transcripts_$split.jsonl" \
      --threads "$num_jobs" "${CFG[@]}"
    touch "exp/whisper/.done_$split"
  done
}

# rescore_whisper CORPUS [options]: (after word_lists) the list words of Whisper's transcripts spotted into
# awe_rescore's best paths, the embedder's gate tuned on dev (rescorer tune --methods
# awe_rescore,awe_whisper_context_list,...; config section rescore_whisper, skipped without it);
# with --save-config (the recipes pass it for their own lattices) the vote's thresholds and the gate join
# the model's rescorer.json, for `rescorer rescore --transcripts`: the awe scales re-chosen there on the
# same grid (every config's rescore_whisper grid is its rescore grid), recovery's settings kept. Another decoder's lattices (e.g.
# --prefix pocketsphinx_) take their own config section (WHISPER_SECTION, default rescore_whisper)
# and marker of a finished run (WHISPER_DONE, default exp/.rescored_whisper)
rescore_whisper() {
  local corpus="$1"; shift
  local section="${WHISPER_SECTION:-rescore_whisper}" done="${WHISPER_DONE:-exp/.rescored_whisper}"
  cfg "$section"
  if [ "${#CFG[@]}" -eq 0 ]; then log "no $section section in $CONFIG: Whisper list spotting skipped"; return 0; fi
  if [ -f "$done" ]; then log "Whisper list spotting done (rm $done to redo)"; return 0; fi
  rescorer tune --corpus "$corpus" --model-dir exp/embeddings --train-data exp/asr_data/train.pt --out exp/wer.json \
    "${CFG[@]}" "$@"
  touch "$done"
}

# wer_table CORPUS [rescorer wer collect options]: the decoders' results into exp/wer.json
# (beside the rescoring results), then the WER table
wer_table() {
  local corpus="$1"; shift
  rescorer wer collect --corpus "$corpus" --out exp/wer.json "$@" > /dev/null
  rescorer report wer exp/wer.json --corpus "$corpus"
}

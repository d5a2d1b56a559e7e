#!/usr/bin/env bash
# Spelling-view ablation: the same acoustic setup and segments, the spelling encoder seeing
# letters, phones, or letters+phones (rescorer.models.letters); each run evaluated by
# benchmarks/eval_embeddings.py into one row of results/embeddings.json per configuration
# (oov_p_at_1, iv_p_at_1, crossview_ap, acoustic_ap; the row's "config" names the view,
# frontend and data).
#
#   bash benchmarks/spelling_views_ablation.sh SEGMENTS_DIR EXP_DIR [extra train flags ...]
#
# e.g. (speechocean762, Whisper frontend, the recipe's embeddings section):
#   CONFIG=recipes/speechocean762/whisper.yaml NAME=speechocean762/whisper \
#     bash benchmarks/spelling_views_ablation.sh /work/runs/so762_whisper/data/speechocean762/segments exp/views
#
# Environment: CONFIG (recipe config whose `embeddings:` section gives the training flags;
# default recipes/speechocean762/whisper.yaml), NAME (row-name prefix, default
# speechocean762/whisper), VIEWS (default "letters phones letters+phones"), NEAR (near
# negatives per batch word, default 0; rows get a "+nearN" suffix), PYTHON (default
# .envs/k2/bin/python), RESULTS (default results/embeddings.json). Extra arguments go to
# every `rescorer train embeddings` after the config's flags (e.g. --epochs 2 for a smoke run).
#
# speechocean762 has no dev split besides the evaluation one: 10% of the train speakers are
# held out for checkpoint selection (fit.pt / heldout.pt), the corpus dev split is evaluated.
# Resumable: finished training runs resume (and stop at once), rows are replaced.
set -euo pipefail
SEG=${1:?usage: spelling_views_ablation.sh SEGMENTS_DIR EXP_DIR [train flags...]}
EXP=${2:?usage: spelling_views_ablation.sh SEGMENTS_DIR EXP_DIR [train flags...]}
shift 2
PYTHON=${PYTHON:-.envs/k2/bin/python}
CONFIG=${CONFIG:-recipes/speechocean762/whisper.yaml}
NAME=${NAME:-speechocean762/whisper}
VIEWS=${VIEWS:-letters phones letters+phones}
NEAR=${NEAR:-0}
RESULTS=${RESULTS:-results/embeddings.json}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
rescorer() { "$PYTHON" -m rescorer "$@"; }

for f in train.pt dev.pt; do
  [ -f "$SEG/$f" ] || { echo "error: $SEG/$f missing (run the recipe's segments stage first)" >&2; exit 2; }
done
mkdir -p "$EXP"
if [ ! -f "$EXP/holdout/fit.pt" ]; then
  "$PYTHON" benchmarks/eval_embeddings.py holdout --train "$SEG/train.pt" --out-dir "$EXP/holdout" --fraction 0.1 --seed 0
fi
CFG=()
out="$(rescorer config-flags "$CONFIG" embeddings)"
if [ -n "$out" ]; then mapfile -t CFG <<< "$out"; fi

suffix=""
[ "$NEAR" != 0 ] && suffix="+near$NEAR"
for view in $VIEWS; do
  run="$EXP/${view/+/_}${suffix}"
  echo "== $view$suffix -> $run" >&2
  rescorer train embeddings --train "$EXP/holdout/fit.pt" --dev "$EXP/holdout/heldout.pt" --out "$run" --resume \
    "${CFG[@]}" --spelling-views "$view" --near-negatives "$NEAR" "$@"
  "$PYTHON" benchmarks/eval_embeddings.py --corpus speechocean762 --name "$NAME/$view$suffix" \
    --segments-dir "$SEG" --split dev --model-dir "$run" --out "$RESULTS" --no-progress \
    --note "spelling-view ablation: $view$suffix; trained on 90% of train speakers ($EXP/holdout/fit.pt), selected on the other 10%, evaluated on the dev split"
done

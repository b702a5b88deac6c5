#!/bin/bash
# The whole Kun grid with the reference scripts' five arguments:
#
#   slurm/pipeline.sh LABEL_MODEL POINT_MODEL ANSWER_MODEL DATA_PATH OUTPUT_PATH [key=value ...]
#
# LABEL_MODEL   the Label model folder (the published Kun Label model, or `kun-hpc train label`'s)
# POINT_MODEL   the chat model folder that judges instructions (Yi-34B/6B chat, or `kun-hpc train chat`'s)
# ANSWER_MODEL  the chat model folder that writes answers (often the same as POINT_MODEL)
# DATA_PATH     the corpus: a file, a folder or a glob
# OUTPUT_PATH   the run folder: shards, every stage's output, logs, and the dataset in merge/dataset/
# key=value     more overrides for `kun-hpc run`, after (so winning over) the ones made here
#
# Variables: KUN_PROFILE      cluster profile (default configs/profiles/a100-34b.yaml; see docs/configs.md)
#            KUN_DATA_FORMAT  jsonl (default: JSON lines with a `text` field; corpora.0.text_field=... to
#                             change it), wudao, wanjuan or skypile (their native layouts)
#            KUN_PYTHON       python with kun-hpc's dependencies (default python3)
#
# Run it where you submit jobs (a login node): it shards DATA_PATH, submits the grid (on Slurm: chained
# arrays) and waits until every unit is done; run it again to resume. No argument is ever parsed by the
# shell or by YAML: the five go to kun-hpc as environment variables, read by OmegaConf's oc.env at load.
set -euo pipefail

usage="usage: $0 LABEL_MODEL POINT_MODEL ANSWER_MODEL DATA_PATH OUTPUT_PATH [key=value ...]"
if [ "$#" -lt 5 ]; then
    echo "$usage" >&2
    exit 2
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

absolute() {  # relative paths are relative to where the script was started, not where the jobs run
    case "$1" in
        /*) printf '%s' "$1" ;;
        *) printf '%s/%s' "$PWD" "$1" ;;
    esac
}

names=(KUN_LABEL_MODEL KUN_POINT_MODEL KUN_ANSWER_MODEL KUN_DATA_PATH KUN_OUTPUT_PATH)
for i in 0 1 2 3 4; do
    value=$1
    shift
    if [ -z "$value" ]; then
        echo "$0: argument $((i + 1)) (${names[$i]#KUN_}) is empty; $usage" >&2
        exit 2
    fi
    case "$value" in
        *'${'*)  # OmegaConf would read it as an interpolation whenever the config is loaded again
            echo "$0: argument $((i + 1)) (${names[$i]#KUN_}) contains '\${', which kun-hpc configs cannot hold: $value" >&2
            exit 2 ;;
    esac
    export "${names[$i]}=$(absolute "$value")"
done
export KUN_DATA_FORMAT=${KUN_DATA_FORMAT:-jsonl}
PROFILE=${KUN_PROFILE:-$REPO/configs/profiles/a100-34b.yaml}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# single quotes: the ${oc.env:...} below are for OmegaConf, not for the shell
exec "${KUN_PYTHON:-python3}" -m kun_hpc.cli run --wait "$PROFILE" \
    'run.dir=${oc.env:KUN_OUTPUT_PATH}' \
    'corpora=[{name: "${oc.env:KUN_DATA_FORMAT}", format: "${oc.env:KUN_DATA_FORMAT}", paths: ["${oc.env:KUN_DATA_PATH}"]}]' \
    'label.engine.model=${oc.env:KUN_LABEL_MODEL}' \
    'point.engine.model=${oc.env:KUN_POINT_MODEL}' \
    'answer.engine.model=${oc.env:KUN_ANSWER_MODEL}' \
    "$@"

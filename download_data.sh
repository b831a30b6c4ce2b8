#!/usr/bin/env bash
# Get training data into data/imgs and data/masks.
#
#   ./download_data.sh                  Kaggle Carvana (needs the kaggle CLI, ~/.kaggle/kaggle.json, and the
#                                       competition rules accepted on kaggle.com)
#   ./download_data.sh --synthetic [N] [--width W --height H] [--seed S] [--out DIR]
#                                       N offline synthetic images in the same format (default 48, 1918x1280)
set -euo pipefail
caller=$PWD
case "${PYTHON:-}" in */*) [ "${PYTHON#/}" = "$PYTHON" ] && PYTHON="$caller/$PYTHON" ;; esac  # relative: the caller's
cd "$(dirname "$(readlink -f "$0" 2>/dev/null || echo "$0")")"  # through a link to it too: its own folder
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}

if [ "${1:-}" = "--synthetic" ]; then
    shift
    count=48
    case "${1:-}" in  # N is optional: the next word is N unless it is a flag (-5 is a count, refused as one)
        -[0-9]*|[!-]*) count=$1; shift ;;
    esac
    # relative: the caller's; ~ (quoted, or after --out=, where the shell leaves it): the home folder
    from_caller() { case "$1" in /*|"") echo "$1" ;; "~"|"~/"*) echo "$HOME${1#\~}" ;; *) echo "$caller/$1" ;; esac; }
    args=()
    while [ $# -gt 0 ]; do  # --out DIR is in the caller's folder (this script runs from its own)
        case "$1" in
            --out) args+=("$1"); [ $# -gt 1 ] && [ "${2#--}" = "$2" ] && { args+=("$(from_caller "$2")"); shift; } ;;
            --out=*) args+=("--out=$(from_caller "${1#--out=}")") ;;
            *) args+=("$1") ;;
        esac
        shift
    done
    # this folder first on the path, also under PYTHONSAFEPATH: a caller's own utils/ must not stand in for ours
    PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m utils.synthetic_data --out "$PWD/data" \
        --count "$count" ${args[@]+"${args[@]}"}
fi
if [ $# -gt 0 ]; then
    echo "usage: $0 [--synthetic [N] [--width W --height H] [--seed S] [--out DIR]]" >&2
    exit 2
fi

if ! command -v kaggle >/dev/null 2>&1; then
    echo "error: the kaggle CLI is not installed: pip install kaggle (or use $0 --synthetic)" >&2
    exit 2
fi
if [ ! -f "${KAGGLE_CONFIG_DIR:-$HOME/.kaggle}/kaggle.json" ] && { [ -z "${KAGGLE_USERNAME:-}" ] || [ -z "${KAGGLE_KEY:-}" ]; }; then
    echo "error: no Kaggle credentials: put kaggle.json in ~/.kaggle/ (kaggle.com > Account > API) or set" \
         "KAGGLE_USERNAME and KAGGLE_KEY" >&2
    exit 2
fi

for folder in data/imgs data/masks; do
    if [ -n "$(ls "$folder" 2>/dev/null)" ]; then  # hidden files (.gitkeep, .DS_Store) are not data
        echo "error: $folder already holds $(ls "$folder" | wc -l) files: Carvana would be mixed into them; move" \
             "them elsewhere first (train.py --imgs/--masks read any folder)" >&2
        exit 2
    fi
done

mkdir -p data/imgs data/masks
# Several GB of downloads: kept beside data/ (the same file system, so the files are moved, not copied; /tmp may be
# small), removed on exit whatever happens.
tmp=$(mktemp -d data/.download.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
for file in train_hq.zip train_masks.zip; do
    kaggle competitions download -c carvana-image-masking-challenge -f "$file" -p "$tmp"
    if [ ! -f "$tmp/$file" ]; then
        echo "error: the kaggle CLI wrote no $file (found: $(ls "$tmp" | tr '\n' ' ')): download it from" \
             "kaggle.com/c/carvana-image-masking-challenge/data and unzip it into data/" >&2
        exit 1
    fi
    "$PYTHON" -m zipfile -e "$tmp/$file" "$tmp"   # Python's own unzip: no unzip package needed
    rm "$tmp/$file"
done
mv "$tmp"/train_hq/* data/imgs/
mv "$tmp"/train_masks/* data/masks/
echo "Carvana: $(ls data/imgs | wc -l) images in data/imgs, $(ls data/masks | wc -l) masks in data/masks"

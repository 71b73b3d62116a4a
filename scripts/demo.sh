#!/usr/bin/env bash
# The main job end to end on the bundled demo set: fit, then a few searches.
set -euo pipefail
RUN=${1:-runs/demo}
MANIFEST=${2:-data/openclipart-demo/manifest_stripped.csv}
BIN=${BIN:-.venv/bin}
export HF_HUB_OFFLINE=1

"$BIN/huse" fit "$MANIFEST" --out "$RUN"
if "$BIN/huse" --help | grep -q " index"; then
  "$BIN/huse" index "$RUN"
  for q in "a red apple" "a sailing boat on the sea" "a bird with wings"; do
    echo; echo "== huse search $RUN --text \"$q\" -k 5"
    "$BIN/huse" search "$RUN" --text "$q" -k 5
  done
  echo; echo "Search from the browser: $BIN/huse serve $RUN  (then open http://127.0.0.1:8000)"
fi
[ -f "$RUN/report.html" ] && echo "Report: $RUN/report.html"
echo "Model card: $RUN/model/README.md   metrics: $RUN/metrics.json"

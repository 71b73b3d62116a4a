#!/usr/bin/env bash
# The main job end to end on the bundled demo set: fit and index in one command, then a
# few searches (one query at a time, and a batch read from stdin as JSON Lines).
set -euo pipefail
RUN=${1:-runs/demo}
MANIFEST=${2:-data/openclipart-demo/manifest_stripped.csv}
BIN=${BIN:-.venv/bin}
export HF_HUB_OFFLINE=1

# --index: the catalogue's FAISS index is built when training ends (RUN/index).
"$BIN/huse" fit "$MANIFEST" --out "$RUN" --index
for q in "a red apple" "a sailing boat on the sea" "a bird with wings"; do
  echo; echo "== huse search $RUN --text \"$q\" -k 5"
  "$BIN/huse" search "$RUN" --text "$q" -k 5
done
echo; echo "== many queries at once: one per line on stdin, one JSON object per line out"
printf 'a black cat\na christmas tree\n' | "$BIN/huse" search "$RUN" --queries - -k 3 --quiet |
  "$BIN/python" -c 'import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print(r["query"]["text"], "->", ", ".join(h["class"] for h in r["results"]))'
echo; echo "Search from the browser: $BIN/huse serve $RUN  (then open http://127.0.0.1:8000)"
[ -f "$RUN/report.html" ] && echo "Report: $RUN/report.html"
echo "Model card: $RUN/model/README.md   metrics: $RUN/metrics.json"

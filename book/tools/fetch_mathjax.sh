#!/usr/bin/env bash
# Regenerate the trimmed, offline copy of MathJax 3 that the book ships in book/_mathjax/mathjax/.
#
# The book renders math without any CDN: Sphinx loads _static/mathjax/tex-mml-chtml.js, and MathJax
# finds its fonts and TeX extensions relative to that file. Only three pieces are needed (~2 MB):
#   es5/tex-mml-chtml.js, es5/output/chtml/fonts/woff-v2/, es5/input/tex/extensions/
# The copy lives outside book/_static on purpose: Jupyter Book 1 injects every .js under _static
# into every page, which would load all TeX extensions eagerly.
#
# Usage: bash book/tools/fetch_mathjax.sh          (needs npm and access to the npm registry)
set -euo pipefail

VERSION="3.2.2"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEST="$HERE/../_mathjax/mathjax"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

(cd "$WORK" && npm pack --silent "mathjax@${VERSION}" >/dev/null)
tar -xzf "$WORK/mathjax-${VERSION}.tgz" -C "$WORK"
SRC="$WORK/package"

STAGE="$WORK/stage"
mkdir -p "$STAGE/output/chtml/fonts" "$STAGE/input/tex"
cp "$SRC/es5/tex-mml-chtml.js" "$STAGE/"
cp -r "$SRC/es5/output/chtml/fonts/woff-v2" "$STAGE/output/chtml/fonts/"
cp -r "$SRC/es5/input/tex/extensions" "$STAGE/input/tex/"
cp "$SRC/LICENSE" "$STAGE/LICENSE"
echo "mathjax@${VERSION} from the npm registry, trimmed by book/tools/fetch_mathjax.sh" > "$STAGE/VERSION"

rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
mv "$STAGE" "$DEST"
du -sh "$DEST"

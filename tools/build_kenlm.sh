#!/usr/bin/env bash
# Builds KenLM's estimator (lmplz) and binary-format tool (build_binary) from the PyPI kenlm sdist, the one source
# of KenLM's C++ a package index serves (its wheels query models but carry no lmplz; Debian has no kenlm package).
# The binaries are cached outside the repository, keyed by version, so a second `make setup` does nothing.
#   tools/build_kenlm.sh [PYTHON]     (PYTHON: the venv's, for pip download; default .venv/bin/python)
# Needs cmake, a C++ compiler, Boost (program_options, system, thread, test) and zlib headers: installed with
# apt-get when run as root, else named.
set -euo pipefail
VERSION=0.3.0
PY=${1:-.venv/bin/python}
DEST=${XLSR_KENLM_HOME:-$HOME/.cache/xlsr_dist/kenlm-$VERSION}
if [ -x "$DEST/bin/lmplz" ] && [ -x "$DEST/bin/build_binary" ]; then
  exit 0
fi
PKGS="build-essential cmake libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev zlib1g-dev"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "tools/build_kenlm.sh: install these Debian packages first:$missing" >&2
    exit 1
  fi
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# --no-build-isolation: pip only reads the sdist's metadata; an isolated build would compile cmake from source.
"$PY" -m pip download -q --no-deps --no-build-isolation --no-binary kenlm "kenlm==$VERSION" -d "$work"
tar -xzf "$work/kenlm-$VERSION.tar.gz" -C "$work"
# KENLM_MAX_ORDER 6: orders up to 6 (the default build's); higher orders cost memory in every query.
# The compiler's deprecation warnings (std::binary_function) go to a log shown only when the build fails.
if ! { cmake -S "$work/kenlm-$VERSION" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DKENLM_MAX_ORDER=6 &&
  cmake --build "$work/build" --target lmplz build_binary -j "$(nproc)"; } >"$work/build.log" 2>&1; then
  tail -40 "$work/build.log" >&2
  echo "tools/build_kenlm.sh: building KenLM $VERSION failed (above: the end of its log)" >&2
  exit 1
fi
mkdir -p "$DEST.partial/bin"
cp "$work/build/bin/lmplz" "$work/build/bin/build_binary" "$DEST.partial/bin/"
rm -rf "$DEST"
mv "$DEST.partial" "$DEST"
echo "KenLM $VERSION built: $DEST/bin/lmplz, $DEST/bin/build_binary"

#!/usr/bin/env bash
# Fetch the public MovieLens data sets used by the evaluation (README "Evaluation") into .cache/data/.
# They are for local evaluation only: .cache/ is git-ignored, never commit them. Nothing at run time
# (workers, tests, demo) downloads data; only this script does, and only when asked.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=".cache/data"
mkdir -p "$dest"
base="https://files.grouplens.org/datasets/movielens"
for name in ml-100k ml-latest-small; do
  if [[ -d "$dest/$name" ]]; then
    echo "$dest/$name already present"
    continue
  fi
  tmp="$(mktemp -d)"
  curl -fsSL --retry 3 -o "$tmp/$name.zip" "$base/$name.zip"
  python3 -m zipfile -e "$tmp/$name.zip" "$tmp/"
  mv "$tmp/$name" "$dest/$name"
  rm -rf "$tmp"
  echo "fetched $dest/$name"
done
# The README's figures were measured on exactly these files (the ratings, and the metadata the evaluation
# turns into content vectors) (ml-latest-small is re-released from time to
# time; a different version gives different figures).
# Where files.grouplens.org is unreachable, put any copy of these files in .cache/data/<name>/ first
# (the script then skips the download): the checksums below say whether it is the same data.
sha256sum -c - <<SUMS
06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490  $dest/ml-100k/u.data
6d258d2a03ffd179ade1a5ce725b21cf7a35538f65de1940a311f1dc43ee468e  $dest/ml-latest-small/ratings.csv
553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701  $dest/ml-100k/u.item
c47b783f23eb304413307e1bb05335e427737da20ec8d3c0e96335567dd5f3dc  $dest/ml-latest-small/movies.csv
SUMS

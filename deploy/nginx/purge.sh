#!/usr/bin/env bash
# Purges hayloft blobs from an nginx edge cache by tag, as a CDN purges by
# Surrogate-Key / Cache-Tag: every cached response whose Surrogate-Key
# header carries the tag is removed (nginx keeps each response's headers in
# its cache file). Open-source nginx has no purge of its own.
#
#   purge.sh <cache dir> <tag>...
#   purge.sh /var/cache/nginx/hayloft blob-3000000015c12c473
#   purge.sh /var/cache/nginx/hayloft volume-3 collection-private
#
# Tags: blob-<blob id>, volume-<volume id>, collection-<name>. Prints the
# number of cached responses removed.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 <cache dir> <tag>..." >&2
  exit 2
fi
dir=$1
shift
removed=0
for tag in "$@"; do
  if ! [[ "$tag" =~ ^(blob|volume|collection)-[A-Za-z0-9._-]+$ ]]; then
    echo "purge: not a hayloft tag: $tag" >&2
    exit 2
  fi
  # The header block of a cache file ends at the first empty line; the tag
  # is a whole word of the Surrogate-Key line.
  while IFS= read -r -d '' file; do
    rm -f -- "$file"
    removed=$((removed + 1))
  done < <(grep -rlZaiE "^Surrogate-Key: (.* )?${tag//./\\.}( .*)?"$'\r'"?$" "$dir" 2>/dev/null || true)
done
echo "$removed"

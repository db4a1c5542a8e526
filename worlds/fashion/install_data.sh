#!/usr/bin/env bash
# The Fashion world's data: Debian's dataset-fashion-mnist (MIT, (c) Zalando), which installs the
# four IDX files under /usr/share/datasets/fashion-mnist/. Installed when missing and we are root
# (CI and fresh machines); otherwise a hint, and galot says the same when the world is used.
# Idempotent: does nothing when the files are present.
set -euo pipefail
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/train-images-idx3-ubyte.gz" ] && [ -f "$dir/t10k-labels-idx1-ubyte.gz" ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "installing dataset-fashion-mnist (Debian package, 31 MB) for the Fashion world" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq dataset-fashion-mnist >/dev/null
else
    echo "note: $dir is missing and not root: the Fashion world needs \`apt-get install dataset-fashion-mnist\`" \
         "(or data.root pointing at a folder with the four Fashion-MNIST IDX files); its tests will be skipped" >&2
fi

#!/usr/bin/env bash
# Create .venv and install latentserve with the given extras (default: server).
#   scripts/setup.sh server            # serve only
#   scripts/setup.sh server,ray        # any comma-separated extras (ray: Ray Serve)
#   scripts/setup.sh all               # every extra: server, grpc, training, client, bench,
#                                      # dev, deploy, ray and test-clients (what the tests need)
# The server and client dependencies come from the hash-checked lock requirements/server.txt
# (scripts/lock.sh refreshes it); the other extras resolve within its pins.
# Torch is installed first and pinned, so pip does not pull a multi-GB CUDA build on a CPU
# machine; set TORCH_INDEX_URL (e.g. the PyTorch CPU wheel index) where plain PyPI would.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-server}
lock=requirements/server.txt
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $("$py" --version)" >&2
  "$py" -m venv .venv
fi
. .venv/bin/activate
# pip's -q hides everything for a minute or more on a fresh machine: say what each step does and
# list the packages as pip collects them.
step() { echo "== $1" >&2; }
pip_listing() {
  python -m pip install --progress-bar off "$@" 2>&1 \
    | sed -n -u -e 's/^Collecting \([^ ]*\).*/   \1/p' -e '/^ERROR/p' -e '/^Successfully installed/p'
}
step "upgrading pip in .venv"
python -m pip install -q --upgrade pip
if [ "$extras" = "all" ]; then
  step "installing torch ${TORCH_VERSION:-2.13.0} (CPU build)"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}" --index-url "$TORCH_INDEX_URL"
  else
    python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
  fi
  extras="server,grpc,training,client,bench,dev,deploy,ray,test-clients"
fi
case ",$extras," in
  *,server,*)
    step "installing the server's locked dependencies ($lock, hash-checked)"
    pip_listing --require-hashes -r "$lock" ;;
esac
# The other extras resolve within the lock's pins. A constraints file with hashes would switch
# pip to hash-checking for everything, which an editable install cannot pass: drop the hashes.
pins=$(mktemp)
trap 'rm -f "$pins"' EXIT
sed -e '/--hash=/d' -e 's/ *\\$//' "$lock" > "$pins"
step "installing latentserve[${extras}] (the other extras within the lock's pins)"
pip_listing -c "$pins" -e ".[${extras}]"
echo "installed latentserve[${extras}] into .venv"

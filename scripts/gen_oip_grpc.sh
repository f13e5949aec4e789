#!/usr/bin/env bash
# Regenerate the Open Inference Protocol's gRPC code from the vendored proto (grpcio-tools, in the
# dev extra at the version the committed files were made with):
#   scripts/gen_oip_grpc.sh            # in place
#   scripts/gen_oip_grpc.sh ROOT       # into ROOT/service/oip/grpc_v2 (its proto copied there);
#                                      # the tests compare that with the committed files
# The proto is service/oip/grpc_v2/open_inference_grpc.proto, copied unchanged from
# github.com/kserve/open-inference-protocol, specification/protocol/open_inference_grpc.proto
# at commit d49cc23f89d709d87b210ef9449e273ae243984e (Apache-2.0).
#
# One edit after generation: the messages are registered in a descriptor pool of their own
# instead of protobuf's default pool. Triton's and KServe's client libraries register the same
# `inference.*` messages in the default pool, and two registrations of one name in one process
# fail ("duplicate symbol"), so without it a process could not hold this server and a Triton
# client at once (our tests, a gateway). The wire format does not depend on the pool.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
root=${1:-.}
out=service/oip/grpc_v2
"$py" -m grpc_tools.protoc -I "$root" --python_out="$root" --pyi_out="$root" \
    --grpc_python_out="$root" "$root/$out/open_inference_grpc.proto"
"$py" - "$root/$out/open_inference_grpc_pb2.py" <<'PY'
import sys
from pathlib import Path

path = Path(sys.argv[1])
text = path.read_text()
old = "_descriptor_pool.Default().AddSerializedFile("
assert text.count(old) == 1, "generated code changed shape; revisit the private-pool edit"
path.write_text(text.replace(old, "_descriptor_pool.DescriptorPool().AddSerializedFile("))
PY
echo "regenerated $root/$out"

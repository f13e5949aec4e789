#!/usr/bin/env bash
# Regenerate the Open Inference Protocol's gRPC code from the vendored proto (grpcio-tools, in the
# dev extra at the version the committed files were made with):
#   scripts/gen_oip_grpc.sh
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
out=service/oip/grpc_v2
"$py" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
    "$out/open_inference_grpc.proto"
"$py" - "$out/open_inference_grpc_pb2.py" <<'PY'
import sys
from pathlib import Path

path = Path(sys.argv[1])
text = path.read_text()
old = "_descriptor_pool.Default().AddSerializedFile("
assert text.count(old) == 1, "generated code changed shape; revisit the private-pool edit"
path.write_text(text.replace(old, "_descriptor_pool.DescriptorPool().AddSerializedFile("))
PY
echo "regenerated $out"

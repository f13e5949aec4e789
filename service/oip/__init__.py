"""The Open Inference Protocol (KServe v2) front door: REST under `/v2` and the
`GRPCInferenceService` on a second port, both over the same data plane as the native routes.

    mapping.py      the one map from models, parts and operations to OIP model names, tensors and
                    datatypes, and from an inference request to a data plane call
    protocol.py     the protocol's request, response and tensors, independent of the wire
    rest.py         FastAPI routes (JSON tensors and the binary tensor data extension: rest_body.py)
    grpc_server.py  the grpc.aio service, started and stopped by the app's lifespan
    errors.py       the service's error tree as REST statuses and gRPC status codes
    grpc_v2/        code generated from the protocol's .proto (scripts/gen_oip_grpc.sh)

docs/open-inference-protocol.md describes the mapping for users.
"""

"""gRPC's interop protos (grpc.testing) and the code scripts/gen_protos.py generates from them."""

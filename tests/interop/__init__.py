"""gRPC's own interoperability test cases, copied from grpc/grpc (see ORIGIN.md).

``methods`` (sync client cases), ``aio_methods`` (grpc.aio client cases) and
``service`` (the server) are upstream's files with the changes ORIGIN.md lists;
``grpc_testing`` holds upstream's .proto sources and the code generated from
them by scripts/gen_protos.py. tests/test_interop.py runs them through every
way grpc-throttle can sit on a channel.
"""

"""grpc-throttle's test suite: a package, so helpers import as ``tests.<module>``."""

"""Open Inference Protocol v2: generated gRPC stubs (``make protos``) and the tensor codec."""

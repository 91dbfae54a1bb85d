"""Task pipelines (decode -> preprocess -> infer -> postprocess), shared by the TorchServe entry
points and the gateway's embedded backend."""

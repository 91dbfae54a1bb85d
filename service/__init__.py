"""SepViT gateway: REST and Open Inference Protocol v2 (REST and gRPC) in front of the task
pipelines, with a dynamic batcher per model.

Calls go one way: transport (``rest``, ``grpc_server``) -> ``dataplane`` -> backend
(``backends.embedded``: ``batcher`` -> ``handlers.pipeline``; or ``torchserve.backend``: TorchServe
over gRPC, whose worker runs the same pipeline). Build the app with
:func:`service.app.create_app`; run it with the ``sepvit-serve`` CLI.
"""

__version__ = "0.1.0"

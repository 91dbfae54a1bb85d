"""Everything TorchServe, in one package. Two sides, kept apart:

* TorchServe's side, which imports only what an archive carries: ``sepvit``, ``handlers`` and
  the error table ``service/errors.py`` (no other gateway code):
  :mod:`.handler` (the entry point TorchServe's worker runs) and :mod:`.archive`
  (``sepvit-archive``, which packs it);
* the gateway's side: :mod:`.backend` (the ``torchserve`` backend, a gRPC client of TorchServe)
  with its committed stubs ``torchserve_inference_pb2*`` (from ``proto/``, ``make protos``), and
  :mod:`.process` (a local TorchServe on free loopback ports, for the tests and benchmarks).

This file imports nothing, so importing :mod:`.handler` or :mod:`.archive` loads no gateway code
beyond the error table.
"""

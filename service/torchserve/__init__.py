"""Everything TorchServe: the launcher of a local TorchServe (:mod:`.process`)."""

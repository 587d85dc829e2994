"""Head training: feature cache, training set from the store, trainer (1 process or DDP), jobs.

* ``training.features``: on-disk cache of frozen-model statistics / patch features.
* ``training.dataset``: labelled pixels from accepted samples + flags, balanced sampling.
* ``training.trainer``: ``train_pixels`` (core) and ``train_head`` (store-facing run).
* ``training.ddp``: ``--nproc N`` DistributedDataParallel training.
* ``training.jobs``: the store-backed job worker and the ``train_head`` job kind.
"""

"""Head training: feature cache, training set from the store, trainer (1 process or DDP).

* ``training.features``: on-disk cache of frozen-model statistics / patch features.
* ``training.dataset``: labelled pixels from accepted samples + flags, balanced sampling.
* ``training.frozen``: the frozen model a run is handed (built by ``workbench.models``).
* ``training.fit``: ``train_pixels``, the pure core (a pixel set in, a trained head out).
* ``training.ddp``: ``--nproc N`` DistributedDataParallel training.
* ``training.trainer``: ``train_head``, the store-facing run.
* ``training.outlier_exposure``: the ``oe`` kind (fine-tunes ERFNet's decoder).
* ``training.versions``: a trained version's evaluate / record / activate tail.
* ``training.synth_samples``, ``training.real_recipe``: synthetic samples, the real-data recipe.

The job kinds and the worker that run these in the background are ``workbench.jobs`` /
``workbench.worker``.
"""

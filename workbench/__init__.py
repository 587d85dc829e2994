"""The application layer and composition root.

``anomseg`` (the core: models, scoring, metrics, prediction, synthesis) knows nothing of the
store; ``db`` stores; ``training`` fits heads on what it is handed. This package is where they
meet: it turns a store row into a model or predictor, runs job kinds in the worker, keeps the
render-cache contract, bootstraps the demo world and hosts the ``anomseg`` command line.
Only ``workbench.cli.serve_cmd`` reaches into ``dashboard``.
"""

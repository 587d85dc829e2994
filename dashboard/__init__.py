"""The Gradio UI: one module per tab, ``dashboard.services`` (one small service per tab).

Started only by ``anomseg serve`` (``workbench.cli.serve_cmd``); no other package imports it.
"""

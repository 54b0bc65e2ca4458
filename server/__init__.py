"""``python -m nextdit_nodes serve``: ComfyUI's own graph editor (PyPI ``comfyui-frontend-package``)
served by a small aiohttp server over the pack's headless runner.

The server only wraps the runner: prompts are loaded, validated and executed by ``runtime``
(the same rules, cache and ``IS_CHANGED`` as ``python -m nextdit_nodes run``), and it speaks the
HTTP and websocket protocol of ComfyUI's ``server.py`` that the editor uses. One module per job:
``app`` (wiring), ``command`` (the CLI), ``object_info``, ``prompts`` (queueing and validation
errors), ``jobs`` (queue and history), ``worker`` (the execution thread), ``messages`` (the
websocket), ``files`` (``/view`` and uploads), ``userdata`` (settings and saved workflows),
``templates`` (the pack's example workflows), ``empty_routes`` (what an empty ComfyUI answers),
``paths`` (keeping file names inside their folders).
"""

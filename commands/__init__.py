"""The command line, ``python -m nextdit_nodes COMMAND``: one module per command (``cli.py`` lists
them). The workflow runner the commands drive is ``runtime/``; scripts use it directly."""

"""``python -m pymongosync.cli`` is the ``mongosync`` command."""

from pymongosync.cli.main import main

main()

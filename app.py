"""attnscope dashboard in the checkout (``make run``); ``attnscope serve`` runs the same ``ui/app.py``."""

from attnscope.ui.app import main

main()

"""The dashboard's pages (scripts run by ``st.navigation`` in app.py) and ``ui.common``, the widgets and cached calls they share. Nothing here is imported as a library."""

__all__: list[str] = []  # pages are scripts, not a library

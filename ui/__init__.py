"""The web app's helpers: the shared Workspace, table/chart builders and event handlers.

``app.py`` holds only the layout; everything here is plain Python that tests call directly.
"""

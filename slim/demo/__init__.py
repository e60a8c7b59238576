"""The Space's service (app.py is its UI): request parsing, uploads, checkpoints, ranking, display."""

"""The report of a slim_eval run, built only from ``report.json`` and the per-user ``eval/*.npz`` files.

Nothing here fits or scores a model, so every table and plot can be regenerated after the fact
(``python -m slim_eval.report RUN_DIR``) without pulling in training. By job: ``rows`` (report.json's
rows and labels), ``tables`` (the main table and the paper's table shapes), ``per_user`` (analyses of
the per-user files), ``intervals`` (paired bootstrap over users), ``plots`` (figures), ``compute``
(what each stage cost) and ``markdown`` (report.md and the producing run's record).
"""

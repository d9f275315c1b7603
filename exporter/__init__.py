"""patrol's Prometheus exporter (docs/metrics.md): what the platform team looks at every day.

One small collector per data source (``exporter/sinks.py``, ``pats.py``, ``validity.py``,
``keda.py``, ``pools.py``, ``pipelines.py``), each with a ``refresh()`` that does the I/O and a
``collect()`` that only reads its snapshot; a background :mod:`~exporter.refresher` refreshes
them on their intervals; :mod:`~exporter.exposition` renders the text once per change and
:mod:`~exporter.server` serves it. :mod:`~exporter.assembly` builds all of it from a
configuration; :mod:`~exporter.cli` is ``patrol exporter``.
"""

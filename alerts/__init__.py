"""patrol's Prometheus rules, kept as code so the rule file and the PrometheusRule never drift.

This directory is not part of the installed distribution: it is tooling run from a checkout
(``python -m alerts.rules --write``). It imports nothing of patrol's packages.
"""

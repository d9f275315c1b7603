"""patrol's Grafana dashboards, built from code so the JSON is reviewed as a small diff.

This directory is not part of the installed distribution: it is tooling run from a checkout
(``python -m dashboards.build --write``). It imports nothing of patrol's packages.
"""

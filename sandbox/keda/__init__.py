"""KEDA (v2.20 by default) and the agent pods its ScaledJobs run, simulated from KEDA's source.

Where to look: ``scaler`` (the azure-pipelines scaler's HTTP and Go decoding), ``controller``
(reconcile, scalers cache, scale loop, conditions), ``agents`` (agent pods).
"""

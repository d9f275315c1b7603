"""KEDA (v2.20 by default) and the agent Jobs its ScaledJobs run, simulated from KEDA's source.

Where to look: ``scaler`` (the azure-pipelines scaler's HTTP and Go decoding), ``controller``
(reconcile, rollout, scalers cache, scale loop, conditions), ``agents`` (the batch/v1 Jobs and
their agent pods), ``events`` (which Event recorder KEDA's version uses), ``secretcache`` (the
informer cache KEDA reads Secrets through), ``harm`` (what the world suffered).
"""

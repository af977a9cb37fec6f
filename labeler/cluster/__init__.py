"""Running ``labeler`` jobs on a remote Ray cluster through the Ray Jobs API.

:mod:`labeler.cluster.submit` builds and submits the job (entrypoint, runtime environment,
deterministic submission id); :mod:`labeler.cluster.command` adds ``labeler submit``,
``labeler logs`` and ``labeler stop`` to the command line. Manifests for clusters (Ray cluster
launcher, KubeRay) and the worker image live in ``infra/``.
"""

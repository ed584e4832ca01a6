"""Deployment: the compose stack and the Kubernetes manifests, rendered from
the same :class:`~lenshouse.deploy.topology.Topology` as ``cluster up``
(``lenshouse deploy render``), so the three cannot drift apart."""

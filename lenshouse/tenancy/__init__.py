"""Tenants and their bearer tokens: who may read and write which tenant's data.

A token is random (``lh_<id>_<secret>``, 160 bits of secret); the store keeps
only its SHA-256, the tenant it grants and its id (to list and revoke it).
The embedded server keeps them in a file of its data directory, the cluster
in the keeper; both are read through :class:`~lenshouse.tenancy.registry.Registry`.
"""

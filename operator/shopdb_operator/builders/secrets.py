"""The credential Secrets. Passwords come from the caller (generated once with `secrets`),
so this module stays pure; the handler creates each Secret only if it is missing."""

from __future__ import annotations

from dataclasses import dataclass

from .common import (PGBOUNCER, POSTGRES, POSTGRES_PORT, REDIS, ClusterContext, metadata)

SUPERUSER = "postgres"
REPLICATION_USER = "streaming_replica"
PGBOUNCER_ADMIN_USER = "pgbouncer_admin"


@dataclass(frozen=True)
class Credential:
    suffix: str  # the Secret is <cluster>-<suffix>
    component: str

    def secret_name(self, ctx: ClusterContext) -> str:
        return ctx.child(self.suffix)


SUPERUSER_CREDENTIAL = Credential("superuser", POSTGRES)
REPLICATION_CREDENTIAL = Credential("replication", POSTGRES)
APP_CREDENTIAL = Credential("app", POSTGRES)
PGBOUNCER_CREDENTIAL = Credential("pgbouncer", PGBOUNCER)
REDIS_CREDENTIAL = Credential("redis", REDIS)
CREDENTIALS = (SUPERUSER_CREDENTIAL, REPLICATION_CREDENTIAL, APP_CREDENTIAL,
               PGBOUNCER_CREDENTIAL, REDIS_CREDENTIAL)


def username(ctx: ClusterContext, credential: Credential) -> str:
    return {
        SUPERUSER_CREDENTIAL: SUPERUSER,
        REPLICATION_CREDENTIAL: REPLICATION_USER,
        APP_CREDENTIAL: ctx.spec.postgres.owner,
        PGBOUNCER_CREDENTIAL: PGBOUNCER_ADMIN_USER,
        REDIS_CREDENTIAL: "default",
    }[credential]


def credential_secret(ctx: ClusterContext, credential: Credential, password: str) -> dict:
    """A Secret with `username` and `password`; the app Secret also says where to connect.

    With reclaimPolicy Retain the Secrets are not owned by the cluster, so they outlive it
    together with the volumes whose roles they unlock.
    """
    owned = ctx.spec.reclaim_policy.value == "Delete"
    data = {"username": username(ctx, credential), "password": password}
    if credential == APP_CREDENTIAL:
        data |= {
            "dbname": ctx.spec.postgres.database,
            "host": ctx.child(PGBOUNCER),
            "port": str(POSTGRES_PORT),
        }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(ctx, credential.secret_name(ctx), credential.component, owned=owned),
        "type": "kubernetes.io/basic-auth",
        "stringData": data,
    }

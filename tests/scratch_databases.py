"""Throwaway databases on the machine's PostgreSQL and MariaDB, made once here for every test.

Each gets a fresh random name and a login of its own (the target's credential in a test
broker's config), and is dropped with its login at the end, even when the test failed.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

PG_ADMIN: dict[str, Any] = {"host": "127.0.0.1", "user": "postgres", "autocommit": True}
MY_ADMIN: dict[str, Any] = {"host": "127.0.0.1", "user": "root", "password": "", "autocommit": True}
MY_HOSTS = ("%", "localhost")


def scratch_name(prefix: str = "hoop_test_") -> str:
    return prefix + secrets.token_hex(4)


@contextmanager
def scratch_postgres(
    schema: Iterable[str] = (),
    *,
    password: str | None = None,
    prefix: str = "hoop_test_",
) -> Iterator[str]:
    """A PostgreSQL database NAME owned by the login role NAME_app (with PASSWORD, if given),
    filled with SCHEMA's statements run as that role; yields NAME."""
    import psycopg

    name = scratch_name(prefix)
    role = name + "_app"
    login = f"LOGIN PASSWORD '{password}'" if password is not None else "LOGIN"
    with psycopg.connect(**PG_ADMIN, dbname="postgres") as admin:
        admin.execute(f"CREATE ROLE {role} {login}")  # type: ignore[arg-type]
        admin.execute(f"CREATE DATABASE {name} OWNER {role}")  # type: ignore[arg-type]
    try:
        statements = list(schema)
        if statements:
            with psycopg.connect(**PG_ADMIN, dbname=name) as db:
                db.execute(f"SET ROLE {role}")  # type: ignore[arg-type]
                for statement in statements:
                    db.execute(statement)  # type: ignore[arg-type]
        yield name
    finally:
        with psycopg.connect(**PG_ADMIN, dbname="postgres") as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]
            admin.execute(f"DROP ROLE IF EXISTS {role}")  # type: ignore[arg-type]


@contextmanager
def scratch_mariadb(
    schema: Iterable[str] = (),
    *,
    password: str,
    prefix: str = "hoop_test_",
) -> Iterator[str]:
    """A MariaDB database NAME and the user NAME (PASSWORD, from any host) with every right
    on it, filled with SCHEMA's statements; yields NAME."""
    import pymysql

    name = scratch_name(prefix)
    admin = pymysql.connect(**MY_ADMIN)
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
            for host in MY_HOSTS:
                cur.execute(f"CREATE USER '{name}'@'{host}' IDENTIFIED BY '{password}'")
                cur.execute(f"GRANT ALL ON {name}.* TO '{name}'@'{host}'")
            cur.execute(f"USE {name}")
            for statement in schema:
                cur.execute(statement)
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
            for host in MY_HOSTS:
                cur.execute(f"DROP USER IF EXISTS '{name}'@'{host}'")
        admin.close()

"""`python -m shopdb_operator.pgsettings DSN`: print the settings table of the server at DSN
(save it as operator/shopdb_operator/pgsettings/<major>.json)."""

import sys

import psycopg

from . import QUERY, dump

with psycopg.connect(sys.argv[1]) as conn:
    sys.stdout.write(dump(conn.execute(QUERY).fetchall()))

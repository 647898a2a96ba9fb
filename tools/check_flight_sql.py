#!/usr/bin/env python3
"""Checks a running `faccia serve` with clients faccia did not write.

Usage: tools/check_flight_sql.py --flight grpc://HOST:PORT --http http://HOST:PORT \
           --token-file DATA_DIR/analyst-token --data-dir DATA_DIR --faccia path/to/faccia

- ADBC (`adbc-driver-flightsql`): a connection without a token is refused; with the bearer token
  it lists the tables, reads a table schema, runs the per-service index query and a prepared
  statement with a parameter, and gets the same numbers as `faccia sql` (a separate process that
  reads the Parquet files and the log tail). Its metadata calls (the ones browsing tools make:
  info, table types, every object down to columns, a view's schema) answer and make sense.
- HTTP (urllib): /health, /query in JSON with the token, refused without it.

Exits non-zero on the first difference, printing what differed.
"""
import argparse
import csv
import io
import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import adbc_driver_flightsql.dbapi as flight_sql
from adbc_driver_flightsql import DatabaseOptions

INDEX_QUERY = (
    "SELECT service, name, votes, positive, neutral, negative, csat_pct, net_score, "
    "wilson_low_pct, wilson_high_pct FROM service_index ORDER BY service"
)
COUNT_QUERY = "SELECT count(*) AS n FROM votes WHERE service = {service}"


def faccia_sql(faccia, data_dir, query):
    """Rows of `faccia sql --format csv`, as lists of strings."""
    out = subprocess.run(
        [faccia, "sql", "--data-dir", data_dir, "--format", "csv", query],
        check=True, capture_output=True, text=True,
    ).stdout
    rows = list(csv.reader(io.StringIO(out)))
    return rows[0], rows[1:]


def comparable(value):
    """A cell as a number when it is one (CSV text and Arrow values compare equal), else text."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def fail(message):
    print(f"check_flight_sql: {message}", file=sys.stderr)
    sys.exit(1)


def check_adbc(args, token):
    try:
        with flight_sql.connect(args.flight, autocommit=True) as anonymous, anonymous.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchall()
        fail("a connection without a token was answered")
    except Exception as error:  # the driver raises its own error classes
        if "authentication required" not in str(error) and "Unauthenticated" not in str(error):
            fail(f"unexpected refusal without a token: {error}")
        print(f"ADBC without a token: refused ({type(error).__name__})")

    options = {DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"}
    with flight_sql.connect(args.flight, db_kwargs=options, autocommit=True) as conn:
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        tables = {
            table["table_name"]
            for catalog in objects
            for schema in catalog["catalog_db_schemas"] or []
            for table in schema["db_schema_tables"] or []
        }
        for expected in ("votes", "service_index", "municipalities", "heat_map"):
            if expected not in tables:
                fail(f"ADBC does not list {expected}; it lists {sorted(tables)}")
        print(f"ADBC lists {len(tables)} tables and views")
        schema = conn.adbc_get_table_schema("votes")
        if "municipality" not in schema.names or "date" not in schema.names:
            fail(f"votes schema over ADBC: {schema}")

        with conn.cursor() as cursor:
            cursor.execute(INDEX_QUERY)
            table = cursor.fetch_arrow_table()
        header, expected = faccia_sql(args.faccia, args.data_dir, INDEX_QUERY)
        got = [[comparable(v) for v in row.values()] for row in table.to_pylist()]
        expected = [[comparable(v) for v in row] for row in expected]
        if table.column_names != header:
            fail(f"columns differ: ADBC {table.column_names}, faccia sql {header}")
        if got != expected:
            fail(f"per-service index differs:\nADBC       {got}\nfaccia sql {expected}")
        if sum(int(row[2]) for row in got) <= 0:
            fail("the per-service index counts no votes")
        print(f"ADBC per-service index = faccia sql: {len(got)} services, {sum(int(r[2]) for r in got)} votes")

        with conn.cursor() as cursor:
            cursor.execute("SELECT count(*) AS n FROM votes WHERE service = ?", parameters=(1,))
            prepared = cursor.fetchone()[0]
        _, rows = faccia_sql(args.faccia, args.data_dir, COUNT_QUERY.format(service=1))
        if prepared != int(rows[0][0]):
            fail(f"prepared statement counts {prepared} votes of service 1, faccia sql {rows[0][0]}")
        print(f"ADBC prepared statement with a parameter: {prepared} votes for service 1")
        check_adbc_metadata(conn)


def check_adbc_metadata(conn):
    """The metadata calls a browsing tool makes: each answers, and what it says makes sense."""
    info = conn.adbc_get_info()
    if info.get("vendor_name") != "faccia" or not info.get("vendor_version"):
        fail(f"ADBC get_info: {info}")
    print(f"ADBC get_info: {info['vendor_name']} {info['vendor_version']}, {len(info)} values")

    table_types = conn.adbc_get_table_types()
    if sorted(table_types) != ["TABLE", "VIEW"]:
        fail(f"ADBC get_table_types: {table_types}")

    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    tables = {
        (table["table_name"], table["table_type"]): table["table_columns"] or []
        for catalog in objects
        for schema in catalog["catalog_db_schemas"] or []
        for table in schema["db_schema_tables"] or []
    }
    votes = tables.get(("votes", "TABLE"))
    index = tables.get(("service_index", "VIEW"))
    if not votes or not index:
        fail(f"ADBC get_objects(depth=all) lacks votes or service_index: {sorted(tables)}")
    names = [column["column_name"] for column in votes]
    positions = [column["ordinal_position"] for column in votes]
    if not {"municipality", "service", "date"} <= set(names) or positions != list(range(1, len(names) + 1)):
        fail(f"ADBC get_objects columns of votes: {names} at {positions}")
    print(f"ADBC get_objects(depth=all): {len(tables)} tables and views, votes has {len(names)} columns")

    schema = conn.adbc_get_table_schema("service_index")
    views = [f"{field.name}: {field.type}" for field in schema if "view" in str(field.type)]
    if "votes" not in schema.names or views:
        fail(f"service_index schema over ADBC (JDBC drivers before 19.0 read no view types): {schema}")
    print(f"ADBC get_table_schema(service_index): {len(schema.names)} columns, no view types")


def http_get(url, token=None):
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read()


def check_http(args, token):
    status, body = http_get(f"{args.http}/health")
    if status != 200 or body.strip() != b"ok":
        fail(f"/health answered {status} {body!r}")
    query = urllib.parse.quote("SELECT sum(votes) AS votes FROM service_index")
    try:
        http_get(f"{args.http}/query?sql={query}")
        fail("/query answered without a token")
    except urllib.error.HTTPError as error:
        if error.code != 401:
            fail(f"/query without a token answered {error.code}")
    status, body = http_get(f"{args.http}/query?sql={query}&format=json", token)
    votes = json.loads(body)[0]["votes"]
    _, rows = faccia_sql(args.faccia, args.data_dir, "SELECT sum(votes) AS votes FROM service_index")
    if status != 200 or votes != int(rows[0][0]):
        fail(f"HTTP counts {votes} votes, faccia sql {rows[0][0]}")
    print(f"HTTP /query = faccia sql: {votes} votes")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flight", required=True)
    parser.add_argument("--http", required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--faccia", required=True)
    args = parser.parse_args()
    with open(args.token_file, encoding="utf-8") as file:
        token = file.read().strip()
    check_adbc(args, token)
    check_http(args, token)
    print("check_flight_sql: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

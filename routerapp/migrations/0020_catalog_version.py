"""The catalog version (routerapp.selectors.catalog_cache): a counter Postgres triggers bump
in the transaction of any write to the tables the request path caches. Not a Django model, so
a test flush (TRUNCATE of the app's tables) keeps it, and bumps it. Nothing on SQLite."""

from django.db import migrations

TABLES = (
    "routerapp_configuration",
    "routerapp_modelendpoint",
    "routerapp_strategyconfig",
    "routerapp_routerversion",
    "routerapp_budgetpolicy",
    "routerapp_team",
)


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    run = schema_editor.execute
    run(
        "CREATE TABLE IF NOT EXISTS costpass_catalog_version "
        "(id integer PRIMARY KEY, n bigint NOT NULL)"
    )
    run("INSERT INTO costpass_catalog_version (id, n) VALUES (1, 0) ON CONFLICT (id) DO NOTHING")
    run(
        "CREATE OR REPLACE FUNCTION costpass_catalog_bump() RETURNS trigger AS $$ BEGIN "
        "UPDATE costpass_catalog_version SET n = n + 1 WHERE id = 1; RETURN NULL; END $$ "
        "LANGUAGE plpgsql"
    )
    for table in TABLES:
        run(f"DROP TRIGGER IF EXISTS costpass_catalog_bump ON {table}")
        run(
            f"CREATE TRIGGER costpass_catalog_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE "
            f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION costpass_catalog_bump()"
        )


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table in TABLES:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS costpass_catalog_bump ON {table}")
    schema_editor.execute("DROP FUNCTION IF EXISTS costpass_catalog_bump()")
    schema_editor.execute("DROP TABLE IF EXISTS costpass_catalog_version")


class Migration(migrations.Migration):
    dependencies = [
        ("routerapp", "0019_budgets_per_end_user"),
    ]

    operations = [migrations.RunPython(create, drop)]

"""The catalog version takes its next value from a sequence (never handed out twice, rolled back
or not) instead of adding one: a transaction that bumped the version, cached rows under it and
rolled back must not leave a number that a later, different change would reach again."""

from django.db import migrations


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    run = schema_editor.execute
    run("CREATE SEQUENCE IF NOT EXISTS costpass_catalog_version_seq")
    run(
        "SELECT setval('costpass_catalog_version_seq', "
        "(SELECT GREATEST(n, 1) FROM costpass_catalog_version WHERE id = 1))"
    )
    run(
        "CREATE OR REPLACE FUNCTION costpass_catalog_bump() RETURNS trigger AS $$ BEGIN "
        "UPDATE costpass_catalog_version SET n = nextval('costpass_catalog_version_seq') "
        "WHERE id = 1; RETURN NULL; END $$ LANGUAGE plpgsql"
    )


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        "CREATE OR REPLACE FUNCTION costpass_catalog_bump() RETURNS trigger AS $$ BEGIN "
        "UPDATE costpass_catalog_version SET n = n + 1 WHERE id = 1; RETURN NULL; END $$ "
        "LANGUAGE plpgsql"
    )
    schema_editor.execute("DROP SEQUENCE IF EXISTS costpass_catalog_version_seq")


class Migration(migrations.Migration):
    dependencies = [
        ("routerapp", "0020_catalog_version"),
    ]

    operations = [migrations.RunPython(create, drop)]

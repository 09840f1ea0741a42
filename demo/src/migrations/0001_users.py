"""Asok migration 0001: create the `users` table (made by `asok make migration users`)."""

from typing import ClassVar

from asok import Migration, operations


class Migration(Migration):
    dependencies: ClassVar[list[str]] = []

    operations: ClassVar[list] = [
        operations.CreateModel(
            name="User",
            table="users",
            fields={
                "name": {
                    "type": "Field",
                    "sql_type": "TEXT",
                    "nullable": True,
                    "default": None,
                    "unique": True,
                    "max_length": 255,
                    "precision": None,
                    "is_boolean": False,
                    "is_json": False,
                    "is_uuid": False,
                    "is_datetime": False,
                    "is_date": False,
                    "is_time": False,
                    "is_vector": False,
                    "dimensions": None,
                },
                "email": {
                    "type": "Field",
                    "sql_type": "TEXT",
                    "nullable": True,
                    "default": None,
                    "unique": True,
                    "max_length": 255,
                    "precision": None,
                    "is_boolean": False,
                    "is_json": False,
                    "is_uuid": False,
                    "is_datetime": False,
                    "is_date": False,
                    "is_time": False,
                    "is_vector": False,
                    "dimensions": None,
                },
                "password": {
                    "type": "Field",
                    "sql_type": "TEXT",
                    "nullable": False,
                    "default": None,
                    "unique": False,
                    "max_length": None,
                    "precision": None,
                    "is_boolean": False,
                    "is_json": False,
                    "is_uuid": False,
                    "is_datetime": False,
                    "is_date": False,
                    "is_time": False,
                    "is_vector": False,
                    "dimensions": None,
                },
                "is_admin": {
                    "type": "Field",
                    "sql_type": "INTEGER",
                    "nullable": True,
                    "default": False,
                    "unique": False,
                    "max_length": None,
                    "precision": None,
                    "is_boolean": True,
                    "is_json": False,
                    "is_uuid": False,
                    "is_datetime": False,
                    "is_date": False,
                    "is_time": False,
                    "is_vector": False,
                    "dimensions": None,
                },
            },
            relations={},
            search_fields=[],
        )
    ]

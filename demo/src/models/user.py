"""The user table that Asok's session login and WebSocket auth look up."""

from asok import Field, Model


class User(Model):
    """A person who can log in; `password` is stored as Asok's pbkdf2 hash."""

    name = Field.String(unique=True)
    email = Field.Email(unique=True)
    password = Field.Password()
    is_admin = Field.Boolean(default=False)

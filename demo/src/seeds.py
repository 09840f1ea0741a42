"""Demo users, created by `asok seed` (see ../seed_db.py).

`USERS` is also read by the demo page (to show the credentials) and by
tests/asok_project.py, so the accounts are defined in this one place.
"""

USERS = {
    "alice": ("alice@example.com", "alice-pass-1"),
    "bob": ("bob@example.com", "bob-pass-1"),
}
ADMINS = frozenset({"alice"})


def run() -> None:
    """Insert every user of `USERS` that is not in the database yet."""
    from asok.orm import MODELS_REGISTRY

    user_model = MODELS_REGISTRY["User"]
    for name, (email, password) in USERS.items():
        if user_model.find(email=email) is None:
            user_model.create(name=name, email=email, password=password, is_admin=name in ADMINS)

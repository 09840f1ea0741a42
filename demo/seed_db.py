"""Create the demo database: apply the migrations, then add the demo users.

    python seed_db.py [PROJECT_DIR]

PROJECT_DIR defaults to this folder. Both steps are the project's own Asok
commands (`asok migrate`, then `asok seed`, which runs src/seeds.py) run with
PROJECT_DIR as the working directory, because Asok opens `db.sqlite3` relative
to the current directory. Running it again changes nothing.
"""

import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def asok(project: pathlib.Path, *args: str) -> None:
    """Run one `asok` command inside `project`, failing loudly."""
    subprocess.run(
        [sys.executable, "-m", "asok", *args],
        cwd=project,
        stdin=subprocess.DEVNULL,
        check=True,
    )


def seed(project: pathlib.Path = HERE) -> None:
    """Apply the migrations of `project` and insert its seed users."""
    asok(project, "migrate")
    asok(project, "seed")


if __name__ == "__main__":
    seed(pathlib.Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else HERE)

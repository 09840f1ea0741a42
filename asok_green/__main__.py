"""``python -m asok_green``: gevent patches the process before anything else is imported."""

from gevent import monkey

monkey.patch_all()

from asok_green.process.cli import main  # noqa: E402

if __name__ == "__main__":
    main()

"""/logout: end the session (POST from the page's form, or a plain GET)."""

from asok import Request


def render(request: Request):
    """Log out and go back to the home page (a JSON request gets `{"user": null}`)."""
    request.logout()
    if "application/json" in request.environ.get("CONTENT_TYPE", ""):
        return request.json({"user": None})
    request.redirect("/")

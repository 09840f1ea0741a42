"""/whoami: the logged-in user's name, or "guest", as text/plain."""

from asok import Request


def render(request: Request):
    """Name the user this request is authenticated as."""
    user = request.user
    return request.text(user.name if user else "guest")

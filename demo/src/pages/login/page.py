"""/login: a form for people, a JSON answer for scripts and tests.

GET renders the form. POST takes `email` and `password` (form-encoded or a
JSON object) plus the CSRF token (the `asok_csrf` cookie echoed in an
`X-CSRF-Token` header, a `csrf_token` field, or a `csrf_token` JSON key) and
logs in with `request.authenticate`, which sets the `asok_session` and
`asok_sid` cookies. A JSON request gets `{"user": name}` (or 401
`{"error": ...}`); a form gets a redirect to `next` (default "/").
"""

from asok import Request


def get(request: Request):
    """Show the login form."""
    return _form(request)


def post(request: Request):
    """Check the credentials and log the user in."""
    email = str(request.post_form.get("email") or "").strip().lower()
    password = str(request.post_form.get("password") or "")
    user = request.authenticate(email=email, password=password)
    if _wants_json(request):
        if user is None:
            return request.json({"error": "invalid email or password"}, status=401)
        return request.json({"user": user.name})
    if user is None:
        request.status_code(401)
        return _form(request, error="Invalid email or password.", email=email)
    request.redirect(_next_url(request))


def _form(request: Request, error: str = "", email: str = ""):
    return request.html("page.html", error=error, email=email, next_url=_next_url(request))


def _wants_json(request: Request) -> bool:
    return "application/json" in request.environ.get("CONTENT_TYPE", "")


def _next_url(request: Request) -> str:
    """Where to go after logging in: a local path only, never another site."""
    target = str(request.post_form.get("next") or request.args.get("next") or "/")
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target

"""The one place that touches Asok.

``asok_api`` imports every Asok name asok_green uses, public or private;
the rest of the bridge (session cookies, live operators, GraphQL, pages,
the browser client, database release) goes through it. May import the
layers below (server, cluster, history, core, protocol); not ``ops`` (its
sibling) nor ``api`` or ``process``.
"""

"""The one place that touches Asok.

``asok_api`` imports every Asok name asok_green uses, public or private,
and its ``CONTRACT`` lists them (tests/test_asok_contract.py checks it);
the rest of the bridge (session cookies, live operators, GraphQL, pages,
``conn.request``, the browser client, database release) goes through it.
The layers below never import the bridge: ``asok_framework`` installs
Asok's answers to what they ask of the framework behind the app
(``core.framework``) as soon as Asok is in use: a hub bound to an Asok app,
the drop-in installed, a session cookie read. May import the layers below
(server, cluster, history, core, protocol); not ``ops`` (its sibling) nor
``api`` or ``process``.
"""

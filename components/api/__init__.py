"""``dockyard serve``: the HTTP face over the service layer (:mod:`dockyard.sessions`).

Routers per resource (:mod:`.sessions`, :mod:`.keys`, :mod:`.plan`), each a few short
handlers that parse, call the service layer in a bounded thread pool and shape the answer;
the caller is a :class:`~.principal.Principal` resolved once per request from its API key
(:mod:`.store`); one exception handler (:mod:`.errors`) answers every
:class:`~dockyard.errors.DockyardError` with its ``http_status`` and the CLI's ``--json``
error object; middleware (:mod:`.middleware`) gives every request an id, a body limit and
an audit line whose actor is the key's id. docs/api.md describes the endpoints.

Extension points left for later (issue 27): exec, files, stats, logs and events routers
mount beside :mod:`.sessions` in :func:`.app.create_app`; a shared (Redis or database)
rate limiter replaces :class:`~.principal.TokenBuckets` for several replicas.
"""

from __future__ import annotations

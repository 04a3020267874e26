"""``dockyard``: sessions from the command line, a thin face over the service layer
(:mod:`dockyard.sessions`).

Exit codes (also in docs/sessions.md): 0 done; 1 failed (engine, driver, Pulumi);
2 invalid input (a request, stack file or flag — every problem listed); 3 a quota would
be passed; 4 no such session. ``--json`` prints data as JSON on stdout and nothing else
there; progress and errors go to stderr.

The package, one module per verb group:

- :mod:`.root` — the Typer ``app``, ``--version``, and the one handler every verb runs in;
- :mod:`.lifecycle` — ``up``, ``down``, ``ls``, ``show``, ``refresh``, ``validate``;
- :mod:`.access` — ``attach``, ``ssh``, ``logs``;
- :mod:`.backups` — ``audit``, ``backup``, ``restore``, ``snapshots``;
- :mod:`.plan` — ``plan modal``; :mod:`.image` — ``image build``;
- :mod:`.options`, :mod:`.output`, :mod:`.request` — the options, output and request
  file the verbs share; errors print through :mod:`dockyard.terminal` (shared with
  ``serve`` and ``keys``, :mod:`dockyard.api.commands`).

Adding verbs: write a module here, named for its job, with its own
``verbs = typer.Typer()`` (a group: ``typer.Typer(help=..., no_args_is_help=True)``) and
its commands on it (``@verbs.command()``), then register it below with one line —
``app.add_typer(module.verbs)`` merges the commands into ``dockyard``, ``name="group"``
makes them ``dockyard group VERB``; the order of these lines is the order of
``dockyard --help``. Each verb:

- calls the service layer (:mod:`dockyard.sessions`) and holds no logic another face
  (the HTTP API) would need;
- runs its body in ``with errors(as_json):`` (:mod:`dockyard.terminal`): a
  :class:`~dockyard.errors.DockyardError` exits with its code and prints its lines (or
  the ``--json`` error object); anything else is a bug, reported by the root handler;
- takes the shared options (:mod:`.options`: ``JsonFlag`` named ``as_json``,
  ``TenantOption``...) and prints through :mod:`.output` (``emit`` a result, ``progress``
  for engine output on stderr).

``tests/unit/test_cli_errors.py`` enumerates the verbs from the app, so a new verb is
checked for documented exit codes and messages without a change there;
``tests/unit/test_cli.py`` fails on a module's Typer left unregistered.
"""

from __future__ import annotations

from ..api.commands import keys_app, serve
from . import access, backups, image, instant, lifecycle, plan
from .root import app

app.command("serve")(serve)  # the HTTP face's commands (dockyard.api.commands)
app.add_typer(lifecycle.verbs)
app.add_typer(access.verbs)
app.add_typer(backups.verbs)
app.add_typer(instant.verbs)
app.add_typer(instant.snapshot_verbs, name="snapshot")
app.add_typer(instant.pool_verbs, name="pool")
app.add_typer(plan.verbs, name="plan")
app.add_typer(image.verbs, name="image")
app.add_typer(keys_app, name="keys")


def main() -> None:
    app()


__all__ = ["app", "main"]

"""Start-up upgrades (``UPGRADE_ON_START``): which command is running when it is not a
server (a failure is not repeated by the workers starting after it: ``startonce``).

Serving is: no command at all (a WSGI server or a script imports the app), ``flask run``
(its serving process), or the server command of a Flask-Script ``manage.py``
(``runserver``, or any ``flask_script.Server``). Everything else (``flask shell``,
``flask migrations ...``, ``manage.py shell``, custom maintenance commands) does not
upgrade; a serve command of the app's own calls ``contrib.flask.upgrade(app)`` itself.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional

#: Flask-Script's own server command; its ``Server`` objects count under any name.
FLASK_SCRIPT_SERVER = "runserver"


def click_command() -> Optional[str]:
    """The ``flask`` (or ``FlaskGroup``) command being run when it is not a server;
    ``None`` when the app is about to serve: no such command at all or ``flask run``."""
    click = sys.modules.get("click")
    if click is None:
        return None
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    from flask.cli import ScriptInfo

    if ctx.find_object(ScriptInfo) is None:
        return None  # another click program that builds the app
    if ctx.command.name == "run":
        reload = ctx.params.get("reload")
        if reload is None:
            from flask.helpers import get_debug_flag

            reload = get_debug_flag()
        from werkzeug.serving import is_running_from_reloader

        if reload and not is_running_from_reloader():
            return "flask run (the reloader's watcher; its server process upgrades)"
        return None
    return typed_command(ctx)


def typed_command(ctx: Any) -> str:
    """What the user typed, as far as it is known while the app loads: the group's path
    (``flask``, ``portal``) and, from ``sys.argv`` when this process is that program, the
    command's name (click resolves it only after loading the app)."""
    path = str(ctx.command_path)
    root = ctx.find_root().info_name or ""
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    if program == "__main__.py":  # python -m flask
        program = os.path.basename(os.path.dirname(sys.argv[0]))
    if program not in (root, "flask"):
        return path  # this process is another program (a test runner, say)
    words = _words(sys.argv[1:], takes_value=("--app", "-A", "--env-file", "-e"))
    return f"{path} {words[0]}" if words and ctx.command.name != words[0] else path


def flask_script_command() -> Optional[str]:
    """Under a Flask-Script ``manage.py``, the command being run when it is not the
    server (``manage.py shell``); ``None`` when it is, or when no ``manage.py`` runs."""
    script = sys.modules.get("flask_script")
    main = sys.modules.get("__main__")
    names = dict(getattr(main, "__dict__", None) or {})
    if script is None or not any(_from_flask_script(value) for value in names.values()):
        return None  # a WSGI server (or anything else) that imports an app using it
    words = _words(sys.argv[1:], takes_value=())
    word = words[0] if words else ""
    if word == FLASK_SCRIPT_SERVER:
        return None
    for value in names.values():
        commands = getattr(value, "_commands", None)
        if isinstance(value, script.Manager) and isinstance(commands, dict) and \
                isinstance(commands.get(word), script.Server):
            return None
    program = os.path.basename(sys.argv[0]) if sys.argv else "manage.py"
    return f"{program} {word}".strip()


def _from_flask_script(value: Any) -> bool:
    """``value`` is Flask-Script's module, or one of its classes or objects."""
    if getattr(value, "__name__", None) == "flask_script":
        return True
    return str(getattr(value, "__module__", "") or "").startswith("flask_script")


def _words(args: list[str], takes_value: tuple[str, ...]) -> list[str]:
    """The positional words of ``args`` (options and the values of ``takes_value``
    skipped)."""
    words: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in takes_value:
            skip = True
        elif not arg.startswith("-"):
            words.append(arg)
    return words

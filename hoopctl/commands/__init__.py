"""One module per hoopctl command. Importing this package registers them all on the app
(hoopctl.cli_common.app), in the order `hoopctl --help` lists them: the approver's commands,
the engineer's, then the incident responder's.

Each module imports at its top only what building the command line needs (typer and small
modules); what talks to the broker (asyncssh, authlib, keyring, the replay player) is imported
inside the command's body, so start-up, help and completion stay fast.
"""
# isort: skip_file
# (the order of these imports is the order of the commands in --help)

from hoopctl.commands import approve  # noqa: F401
from hoopctl.commands import approvals  # noqa: F401
from hoopctl.commands import request  # noqa: F401
from hoopctl.commands import requests  # noqa: F401
from hoopctl.commands import login  # noqa: F401
from hoopctl.commands import logout  # noqa: F401
from hoopctl.commands import whoami  # noqa: F401
from hoopctl.commands import targets  # noqa: F401
from hoopctl.commands import connect  # noqa: F401
from hoopctl.commands import exec  # noqa: F401
from hoopctl.commands import proxy  # noqa: F401
from hoopctl.commands import mcp  # noqa: F401
from hoopctl.commands import ssh_config  # noqa: F401
from hoopctl.commands import replay  # noqa: F401
from hoopctl.commands import sessions  # noqa: F401
from hoopctl.commands import signals  # noqa: F401
from hoopctl.commands import verify_bundle  # noqa: F401

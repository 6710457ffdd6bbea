"""`hoopctl mcp`: the Model Context Protocol server on stdio, for AI agents (docs/agents.md)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Annotated

import typer

from hoopctl.cli_common import BrokerOption, _address, app


@app.command("mcp")
def mcp(
    print_config: Annotated[
        bool,
        typer.Option(
            "--print-config",
            help="Print the JSON snippet MCP clients take (mcpServers) and exit.",
        ),
    ] = False,
    broker: BrokerOption = None,
) -> None:
    """Serve the Model Context Protocol on stdio, as the logged-in identity.

    Tools: targets_list, exec, approval_wait, schema, sessions_list, session_show. Each calls
    the broker as `hoopctl exec` does: the broker's policy, masking, approvals, budgets,
    recording and audit apply; this server holds no credentials and decides nothing.
    """
    if print_config:
        args = ["mcp", *(["--broker", broker] if broker else [])]
        command = os.path.abspath(shutil.which("hoopctl") or sys.argv[0])
        snippet = {"mcpServers": {"hoop": {"command": command, "args": args}}}
        typer.echo(json.dumps(snippet, indent=2))
        return
    serve(broker)


def serve(broker: str | None) -> None:
    import anyio

    from hoopctl.mcp_server import BrokerLink, Tools, build_server

    tools = Tools(BrokerLink(_address(broker)))
    try:
        anyio.run(build_server(tools).run_stdio_async)
    except KeyboardInterrupt:
        pass
    finally:
        tools.link.close()

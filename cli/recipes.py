"""`aifb recipes ...`: list, show, render (the exact batch script; nothing is submitted)."""

from __future__ import annotations

import typer
from rich.table import Table

from aifb.cli.context import handle_errors, state_of
from aifb.cli.params import parse_params, resources_from_options
from aifb.v1 import server_pb2

app = typer.Typer(help="Browse recipes and render their batch scripts.", no_args_is_help=True)


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """List the recipes the server can deploy."""
    state = state_of(ctx)
    with handle_errors(state):
        recipes = list(state.call(state.server_stub().ListRecipes,
                                  server_pb2.ListRecipesRequest()).recipes)

        def text() -> None:
            table = Table(box=None, header_style="bold")
            for col in ("NAME", "RUNTIME", "HERE", "DESCRIPTION"):
                table.add_column(col)
            for r in recipes:
                runtime = server_pb2.RuntimeKind.Name(r.runtime).removeprefix("RUNTIME_KIND_")
                here = "yes" if r.runnable_here else f"no: {r.not_runnable_reason}"
                table.add_row(r.name, runtime.lower(), here, r.description)
            state.console.print(table)

        state.emit(list(recipes), text)


@app.command()
def show(ctx: typer.Context, name: str = typer.Argument(..., help="Recipe name.")) -> None:
    """Show a recipe's parameters and its source."""
    state = state_of(ctx)
    with handle_errors(state):
        recipe = state.call(state.server_stub().GetRecipe,
                            server_pb2.GetRecipeRequest(name=name)).recipe

        def text() -> None:
            state.console.print(f"[bold]{recipe.name}[/] - {recipe.description}")
            table = Table(box=None, header_style="bold")
            for col in ("PARAMETER", "TYPE", "DEFAULT", "CONSTRAINTS", "DESCRIPTION"):
                table.add_column(col)
            for p in recipe.parameters:
                bounds = []
                if p.HasField("minimum") or p.HasField("maximum"):
                    lo = f"{p.minimum:g}" if p.HasField("minimum") else ""
                    hi = f"{p.maximum:g}" if p.HasField("maximum") else ""
                    bounds.append(f"{lo}..{hi}")
                if p.pattern:
                    bounds.append(f"/{p.pattern}/")
                if p.choices:
                    bounds.append("|".join(p.choices))
                default = "(required)" if p.required else p.default_value
                table.add_row(p.name, p.type, default, " ".join(bounds), p.description)
            state.console.print(table)
            state.console.print("\n" + recipe.source_yaml, markup=False)

        state.emit(recipe, text)


@app.command()
def render(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Recipe name."),
    param: list[str] = typer.Option([], "--param", "-p", help="Recipe parameter KEY=VALUE."),
    cpus: int = typer.Option(0, help="CPUs per task (0: the recipe's default)."),
    memory: str = typer.Option("", help="Memory per node, e.g. 512M or 4G."),
    gpus: int = typer.Option(0, help="GPUs (0: the recipe's default)."),
    time_limit: str = typer.Option("", "--time", help="Time limit: minutes or HH:MM:SS."),
    partition: str = typer.Option("", help="SLURM partition."),
    account: str = typer.Option("", help="SLURM account."),
) -> None:
    """Print the exact batch script `services create` would submit (nothing is submitted)."""
    state = state_of(ctx)
    with handle_errors(state):
        resp = state.call(state.server_stub().RenderService, server_pb2.RenderServiceRequest(
            recipe=name, parameters=parse_params(param, "--param"),
            resources=resources_from_options(cpus, memory, gpus, time_limit, partition,
                                             account)))
        state.emit(resp, lambda: print(resp.batch_script, end=""))

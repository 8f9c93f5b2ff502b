"""genforge's command line: one command per lifecycle verb. Parse, call the library, print.

The commands live by family: training.py (train, cv, quickstart, presets), evaluation.py (evaluate, predict,
explain), generation.py (sample, interpolate, reconstruct, generate), forecasting.py (forecast, backtest),
compression.py (compress, export), serving.py (serve), tuning.py (tune), runs.py (runs, runs compare, runs track) and
datasets.py (data info). console.py and options.py hold what they share; this module, the app and its one error
handler."""

from __future__ import annotations

import os
import sys

import typer

from genforge.cli import compression, datasets, evaluation, forecasting, generation, runs, serving, training, tuning
from genforge.cli.console import err
from genforge.errors import GenforgeError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, evaluate, explain, compress and serve models of images, tables, time series and text.")
runs_app = typer.Typer(help="List and compare run directories.", invoke_without_command=True)
data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(data_app, name="data")
for command in (training.train, evaluation.evaluate, evaluation.predict, evaluation.explain, generation.sample,
                generation.interpolate, generation.reconstruct, generation.generate, forecasting.forecast,
                forecasting.backtest, training.cv, tuning.tune, serving.serve, compression.export, compression.compress,
                training.presets, training.quickstart):  # in the order `genforge --help` lists them
    app.command()(command)
runs_app.callback()(runs.runs_list)
runs_app.command("compare")(runs.runs_compare)
runs_app.command("track")(runs.runs_track)
data_app.command("info")(datasets.data_info_command)


def main() -> None:
    """Entry point: a user's mistake, or a file system that refuses (a file where a folder should be, permissions,
    a full disk), is one line and exit code 2; a bug is a traceback and exit code 1. Argument errors that click
    catches (an unknown command or option, a bad value, a missing argument) are one line too, naming the command
    and its --help, instead of typer's boxed panel."""
    # OpenMP threads that wait for work sleep instead of spinning (torch reads this when it loads, later than here):
    # on a machine that is not idle, spinning threads take the cores the other processes and our own threads need
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    click = sys.modules[typer.BadParameter.__module__]  # the click typer runs on: its own copy since typer 0.23
    no_args = getattr(click, "NoArgsIsHelpError", ())  # click >= 8.2
    try:
        code = app(standalone_mode=False, prog_name="genforge")
    except no_args as e:  # `genforge` or a group alone: its help, as before
        e.show()
        sys.exit(e.exit_code)
    except click.UsageError as e:
        command = e.ctx.command_path if e.ctx is not None else "genforge"
        message = " ".join(e.format_message().split()).rstrip(".")
        err.print(f"error: {command}: {message} (see {command} --help)", markup=False)
        sys.exit(2)
    except click.ClickException as e:
        err.print(f"error: {' '.join(e.format_message().split())}", markup=False)
        sys.exit(e.exit_code)
    except (typer.Abort, getattr(click, "Abort", typer.Abort)):
        err.print("aborted", markup=False)
        sys.exit(1)
    except (GenforgeError, OSError) as e:
        err.print(f"error: {e}", markup=False)
        sys.exit(2)
    if isinstance(code, int) and code:  # typer.Exit(n) and Ctrl-C (130) come back as the exit code
        sys.exit(code)

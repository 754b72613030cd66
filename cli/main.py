"""The `entmtp` command line (installed as the package entmtp_cli).

Every command turns a user's mistake into one line on stderr and a non-zero exit
(2 for usage, 1 otherwise); `--debug` before the command shows tracebacks.
"""
from __future__ import annotations

import sys

import typer
from typer.exceptions import TyperException

from entmtp.errors import EntmtpError, Interrupted

from . import bench, calibrate, cost, heads, kernels, models, run, trees

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="entmtp: fast, exact Medusa/Hydra self-speculative decoding with entropy-guided trees.",
)
# One file per command or command group; each holds its own options and help.
app.command("run")(run.run)
app.command("bench")(bench.bench)
app.command("bench-step")(bench.bench_step)
app.command("calibrate")(calibrate.calibrate)
app.add_typer(models.app, name="models")
app.add_typer(trees.app, name="trees")
app.add_typer(heads.app, name="heads")
app.add_typer(kernels.app, name="kernels")
app.add_typer(cost.app, name="cost")

_DEBUG = {"on": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
    _DEBUG["on"] = debug


def _err(message: str) -> None:
    typer.echo(f"entmtp: error: {message}", err=True)


# ------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=args, prog_name="entmtp", standalone_mode=False)
        if code == 130:
            # Typer turns a KeyboardInterrupt that no command caught into Exit(130), which
            # standalone_mode=False hands back as the return value instead of raising.
            _err("interrupted")
            return 130
        return code if isinstance(code, int) else 0
    except typer.Exit as exc:  # --help and friends
        return exc.exit_code
    except typer.Abort:
        _err("aborted")
        return 130
    except TyperException as exc:
        # Typer's own parse errors; a bare `entmtp` asks for the help text.
        if type(exc).__name__ == "NoArgsIsHelpError":
            typer.echo(exc.format_message())
            return 0
        _err(exc.format_message())  # one line instead of the usage box
        return 2
    except Interrupted as exc:  # a long command's own account of what was kept
        _err(str(exc))
        return exc.exit_code
    except EntmtpError as exc:
        if _DEBUG["on"]:
            raise
        _err(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: still one line unless --debug
        if _DEBUG["on"] or "--debug" in args:
            raise
        _err(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)")
        return 1


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()

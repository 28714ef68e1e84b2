"""The `ticketkit` command line: one small module per subcommand under `ticketkit.commands`.

Exit codes: 0 success, 1 the job failed, 2 bad usage or input, 130 interrupted (Ctrl-C),
143 terminated (SIGTERM). Expected errors print one `Error: ...` line on stderr;
TICKETKIT_DEBUG=1 shows tracebacks of unexpected ones.
"""

from __future__ import annotations

import os
import sys

import typer

from ticketkit.commands import eval as eval_cmd
from ticketkit.commands import export, finetune, plugins, pretrain, prune, runs
from ticketkit.commands.find_ticket import find_ticket
from ticketkit.commands.rewire import rewire

app = typer.Typer(
    name="ticketkit",
    help="Find lottery tickets: sparse and binarized subnetworks of PyTorch models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("pretrain")(pretrain.pretrain)
app.command("prune")(prune.prune)
app.command("find-ticket")(find_ticket)
app.command("rewire")(rewire)
app.command("finetune")(finetune.finetune)
app.command("eval")(eval_cmd.eval_)
app.command("export")(export.export)
app.add_typer(plugins.app, name="plugins")
app.command("runs")(runs.runs)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        sys.stdout.write(f"ticketkit {version('ticketkit')}\n")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="print the version"
    ),
) -> None:
    """Options of `ticketkit` itself (the app's help text is the Typer's, above)."""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point. SIGTERM, what a cluster scheduler sends before it preempts
    a job, interrupts it as Ctrl-C does (atomic writes, the run lock given back, resumable),
    and exits 143; the previous handler is restored for in-process callers (the tests)."""
    import signal

    _terminated.clear()
    try:
        previous = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    except ValueError:  # not the main thread: signals are not ours to handle
        previous = None
    try:
        _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


_terminated: list[int] = []  # the signal that interrupted this run, if it was SIGTERM


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    _terminated.append(signum)
    raise KeyboardInterrupt


def _interrupted() -> None:
    """The one line and exit code of an interrupted command: 130 for Ctrl-C, 143 (128 +
    SIGTERM) when a scheduler stopped it."""
    from ticketkit.commands._common import console

    console.print("Terminated (SIGTERM)." if _terminated else "Interrupted.")
    sys.exit(143 if _terminated else 130)


def _main(argv: list[str] | None) -> None:
    from ticketkit.commands._common import console, main_process
    from ticketkit.errors import TicketkitError

    console.quiet = not main_process()  # under torchrun, rank 0 speaks for the job
    try:
        code = app(args=argv, prog_name="ticketkit", standalone_mode=False)
        # 130: interrupted (Ctrl-C, SIGTERM). Under torchrun the other ranks may be inside a
        # collective this rank will never join: the final barrier would wait for them forever
        _close_process_group(failed=code == 130)
    except TicketkitError as exc:
        _close_process_group(failed=True)
        console.print(f"Error: {exc}", markup=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        _interrupted()
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except _command_line_errors() as exc:  # an unknown flag, a value of the wrong type
        message = exc.format_message().strip()
        if not message:  # no arguments at all: typer has printed the help already
            sys.exit(2)
        context = getattr(exc, "ctx", None)
        hint = f" (see `{context.command_path} --help`)" if context is not None else ""
        console.print(f"Error: {message}{hint}", markup=False, soft_wrap=True)
        sys.exit(2)
    except Exception as exc:
        if os.environ.get("TICKETKIT_DEBUG"):
            raise
        from ticketkit.registry import plugin_of_traceback

        # raised in a third-party plugin's code: name it, so the report goes to its authors
        owner = plugin_of_traceback(exc.__traceback__)
        what = (
            f"plugin '{owner.plugin}' (distribution {owner.distribution} {owner.version}) failed"
            if owner is not None
            else "internal error"
        )
        console.print(
            f"Error: {what}: {type(exc).__name__}: {exc} "
            "(rerun with TICKETKIT_DEBUG=1 for the traceback)",
            markup=False,
            soft_wrap=True,
        )
        sys.exit(1)
    if code == 130:  # typer >= 0.2x turns a KeyboardInterrupt into exit code 130 itself
        _interrupted()
    sys.exit(code if isinstance(code, int) else 0)


def _close_process_group(failed: bool) -> None:
    """Under torchrun: wait for rank 0 after a successful command, then close the group."""
    if "torch.distributed" not in sys.modules:  # never started: keep torch out of the CLI
        return
    from ticketkit.training import distributed

    distributed.abandon() if failed else distributed.finish()


def _command_line_errors() -> tuple[type[Exception], ...]:
    """The parser's error classes: typer >= 0.2x parses with its own copy of click
    (`typer._click`), older versions with click itself; either may be installed."""
    found: list[type[Exception]] = []
    try:
        from typer._click.exceptions import ClickException

        found.append(ClickException)
    except ImportError:
        pass
    try:
        from click import ClickException as Upstream

        found.append(Upstream)
    except ImportError:
        pass
    return tuple(found)

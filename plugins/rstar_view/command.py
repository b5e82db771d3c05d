"""``rstar view``: serve the trees of a run, search or compare folder to a browser, or write them into one page."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from rstar.cli import console
from rstar.errors import DataError, RstarError
from rstar.rundir import write_atomic
from rstar_view.trees import TreeStore

DEFAULT_PORT = 8765


@click.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--port", type=int, help=f"serve on 127.0.0.1:PORT (default {DEFAULT_PORT}; 0: any free port)")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write one self-contained HTML page with the trees in it, instead of serving",
)
@click.option("--open", "open_browser", is_flag=True, help="open the page in the default browser")
def view(source: Path, port: int | None, output: Path | None, open_browser: bool) -> None:
    """Browse search trees in a browser, offline.

    SOURCE is a run folder (`rstar run`), a search folder (`rstar search`), a compare folder (`rstar compare`)
    or a trees.jsonl file. By default the page is served on 127.0.0.1 and picks up the trees a running search
    appends; -o writes a page with the trees embedded, to open from disk or send to someone.
    """
    if port is not None and output is not None:
        raise click.UsageError("give --port (serve the page) or -o (write it), not both")
    store = TreeStore(source)
    store.refresh(final=output is not None, force=True)
    index = store.index()
    for warning in index["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}", markup=True, highlight=False)
    if output is not None:
        _write(store, output, open_browser)
    else:
        _serve(store, DEFAULT_PORT if port is None else port, open_browser)


def _write(store: TreeStore, output: Path, open_browser: bool) -> None:
    from rstar_view.page import render_page

    index = store.index()
    if not index["problems"]:
        raise DataError(f"{store.target}: no trees found (no trees.jsonl with a tree in it)")
    page = render_page(str(store.target), {"live": False, "index": index, "trees": store.all_trees()})
    write_atomic(output, page)
    click.echo(f"wrote {output} ({len(index['problems'])} trees from {len(index['sources'])} trees files)")
    if open_browser:
        import webbrowser

        webbrowser.open(output.resolve().as_uri())


def _serve(store: TreeStore, port: int, open_browser: bool) -> None:
    from rstar_view.server import ViewServer

    try:
        server = ViewServer(store, port)
    except OSError as exc:
        raise RstarError(
            f"cannot serve on 127.0.0.1:{port} ({exc.strerror}); choose another port with --port N (0: any free port)"
        ) from None
    trees = len(store.index()["problems"])
    click.echo(f"rstar view: {trees} trees from {store.target} at {server.url}  (Ctrl-C to stop)")
    sys.stdout.flush()
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        click.echo("stopped")
    finally:
        server.server_close()

"""``lenshouse deploy``: the deployment files."""

from __future__ import annotations

from pathlib import Path

import typer

deploy_app = typer.Typer(help="Deployment files: compose and Kubernetes, from one topology.")


@deploy_app.command()
def render(
    out: Path = typer.Option(Path("deploy"), help="where the files go"),
    check: bool = typer.Option(False, help="only report files that differ; exit 1 if any"),
) -> None:
    """Render the compose stack and the Kubernetes base and overlays."""
    from lenshouse.deploy import render as r

    if check:
        bad = r.stale(out)
        for rel in bad:
            typer.echo(f"out of date: {out / rel}")
        if bad:
            typer.echo("run `lenshouse deploy render` to bring them up to date", err=True)
            raise typer.Exit(1)
        typer.echo(f"{len(r.files())} files up to date in {out}")
        return
    written = r.write(out)
    typer.echo(f"{len(written)} of {len(r.files())} files written under {out}")

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


def capacity_command(
    sensors: int = typer.Option(1000, min=1),
    rate_hz: float = typer.Option(1000, min=0.001),
    days: float = typer.Option(30, min=0.001, help="how long the fleet has written"),
    shards: int = typer.Option(2, min=1, help="1 with --replicas 1: the embedded store"),
    replicas: int = typer.Option(2, min=1),
    values: str = typer.Option("adc16", help="adc16 (16-bit ADC readings) or float (any double)"),
) -> None:
    """Disk, memory, CPU and network for a fleet, from costs measured here."""
    from rich.console import Console
    from rich.table import Table

    from lenshouse.deploy import capacity as c

    if values not in c.RAW_BYTES:
        typer.echo(f"error: --values is adc16 or float, not {values!r}", err=True)
        raise typer.Exit(2)
    fleet = c.Fleet(sensors, rate_hz, days, values)
    what = "the embedded store" if shards * replicas == 1 else f"{shards} shards × {replicas}"
    table = Table("", "figure", "from", title=f"{sensors} sensors × {rate_hz:g} Hz for {days:g} d,"
                  f" {what}, default retention")  # fmt: skip
    for line in c.plan(fleet, shards, replicas):
        table.add_row(line.what, c.human(line.value, line.unit), line.source)
    Console(width=160).print(table)

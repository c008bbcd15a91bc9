"""Safe defaults when the service starts: settings checked in one line that never shows a
secret, private files, and an API key whenever the API is reachable beyond this machine
(`amseg serve` refuses to start without one; `amseg up` makes one and prints it once).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path

import typer

from store.settings import Settings, SettingsError, load_settings

KEY_FILE = "api-key"


def load_settings_or_exit(command: str, **overrides: object) -> Settings:
    """`store.settings.load_settings`; a refused setting ends the command with one line
    naming it, never its value."""
    try:
        return load_settings(**overrides)
    except SettingsError as error:
        typer.echo(f"amseg {command}: {error}", err=True)
        raise typer.Exit(2) from None


def is_loopback(address: str) -> bool:
    """Whether only this machine reaches `address` (localhost, 127.0.0.0/8, ::1)."""
    name = address.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_ip_address(address: str) -> bool:
    try:
        ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    return True


def reachable_from(settings: Settings, host: str) -> str | None:
    """The address other machines reach the API at (PUBLISHED_ADDRESS, else the one it
    listens on), or None when only this machine does."""
    address = settings.published_address or host
    return None if is_loopback(address) else address


def require_key_when_exposed(command: str, settings: Settings, host: str) -> None:
    """End `amseg serve` with one line when other machines could reach an API without a key."""
    address = reachable_from(settings, host)
    if address is not None and not settings.api_keys:
        typer.echo(
            f"amseg {command}: the API would be reachable from other machines ({address})"
            " without a key: set API_KEYS (make one with: python -c 'import secrets;"
            " print(secrets.token_urlsafe(32))'), or listen on 127.0.0.1",
            err=True,
        )
        raise typer.Exit(2)


def key_for_up(data_dir: Path) -> tuple[str, bool]:
    """`amseg up`'s own key, kept (0600) in DATA_DIR/api-key: made on first use, with True
    then (the one time it is printed)."""
    path = data_dir / KEY_FILE
    if path.is_file():
        return path.read_text().strip(), False
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key, True

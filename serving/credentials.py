"""Which API key the ``rtim`` client commands send (scale, import, campaign, export).

In order: ``--api-key``, the ``RTIM_API_KEY`` environment variable, then the
local admin key that ``rtim serve`` made on first start (``<data_dir>/admin.key``
of the settings the command sees: ``--data-dir``, ``RTIM_DATA_DIR`` or the
default). Without any of them no header is sent and the server's 401 says why.
"""

from __future__ import annotations

import os
from pathlib import Path

from models.settings import SettingsError, load_settings

LOCAL_ADMIN_KEY = "admin.key"  # the file name serving.server writes


def client_api_key(explicit: str | None = None, data_dir: str | None = None) -> str | None:
    """The key a client command should send, or None."""
    if explicit:
        return explicit
    if os.environ.get("RTIM_API_KEY"):
        return os.environ["RTIM_API_KEY"]
    try:
        folder = data_dir or load_settings(None, {}).data_dir
    except SettingsError:
        return None
    try:
        return (Path(folder) / LOCAL_ADMIN_KEY).read_text().strip() or None
    except OSError:
        return None


def client_headers(explicit: str | None = None, data_dir: str | None = None) -> dict[str, str]:
    """``{"Authorization": "Bearer …"}`` for :func:`client_api_key`, or ``{}``."""
    key = client_api_key(explicit, data_dir)
    return {"Authorization": f"Bearer {key}"} if key else {}


def add_api_key_argument(parser: object) -> None:
    """``--api-key`` on a client command's argument parser."""
    parser.add_argument(  # type: ignore[attr-defined]
        "--api-key",
        help="API key to send (default: $RTIM_API_KEY, else <data_dir>/admin.key of a "
        "local server)",
    )

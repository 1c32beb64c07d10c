"""Writing the audit trail from routes: who (the key's name), what, the result.

The append (one write and an fsync) runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from models.audit import AuditLog
from serving.auth import caller


async def audit(request: Request, action: str, target: Any, result: str, **detail: Any) -> None:
    log = AuditLog(request.app.state.ingress.settings.data_dir)
    await asyncio.to_thread(log.append, caller(request), action, target, result, **detail)

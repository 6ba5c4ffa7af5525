"""Request dependencies: the service's parts (built once at start-up) and authentication."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from heartvec.jobs.queue import Dispatcher
from heartvec.jobs.storage import Storage
from heartvec.jobs.store import JobStore
from heartvec.settings import Settings


@dataclass
class Services:
    """What the routes work with; `ping_worker` raises when the broker (or the embedded
    worker) is unreachable."""

    settings: Settings
    store: JobStore
    storage: Storage
    dispatcher: Dispatcher
    embedded: bool
    ping_worker: Callable[[], None]


# async: trivial dependencies would otherwise each cost a hop through the thread pool
async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

_bearer = HTTPBearer(auto_error=False)


async def require_api_key(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """With HEARTVEC_API_KEY set, every job route needs `Authorization: Bearer <key>`."""
    expected = services.settings.api_key
    if expected is None:
        return
    given = "" if credentials is None else credentials.credentials
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )

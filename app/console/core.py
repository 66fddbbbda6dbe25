"""The console's own pages: sign-in (an API key becomes a session cookie), sign-out, the
language toggle and the home page."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template

from app.access.service import authenticate
from app.console.i18n import LANGUAGE_COOKIE, LANGUAGES
from app.console.render import page, principal_of
from app.console.security import SESSION_SECONDS, session_data
from app.console.sessions import end_session, start_session
from app.deps import Db
from app.ledger.service import record

Form = Body(media_type=RequestEncodingType.URL_ENCODED)


def safe_next(target: str | None) -> str:
    """Only a path inside the console is a place to go back to (no open redirect)."""
    if target and target.startswith("/console") and "//" not in target and "\\" not in target:
        return target
    return "/console"


class ConsoleCore(Controller):
    path = "/"
    include_in_schema = False

    @get("/", name="console.home")
    async def home(self, request: Request[Any, Any, Any]) -> Template:
        """The pages this role may open."""
        return page(request, "home.html")

    @get("/sign-in", name="console.sign_in")
    async def sign_in_form(self, request: Request[Any, Any, Any]) -> Template:
        return page(request, "sign_in.html")

    @post("/sign-in", status_code=303)
    async def sign_in(
        self, request: Request[Any, Any, Any], data: Annotated[dict[str, str], Form], db: Db
    ) -> Template | Redirect:
        """Exchange an API key for the session cookie; an ingest (write) key may not sign in."""
        principal = await authenticate(db, data.get("api_key", ""))
        if principal is None or principal.role == "ingest":
            return page(request, "sign_in.html", status=401, error="signin.refused")
        request.set_session(session_data(principal.key_id, await start_session(db, principal.key_id, SESSION_SECONDS)))
        await record(db, principal, "console.sign_in", details={"key_id": principal.key_id})
        return Redirect("/console", status_code=303)

    @post("/sign-out", status_code=303)
    async def sign_out(self, request: Request[Any, Any, Any], db: Db) -> Redirect:
        principal = principal_of(request)
        sid = request.session.get("sid") if isinstance(request.session, dict) else None
        if isinstance(sid, str):
            await end_session(db, sid)
        request.clear_session()
        if principal is not None:
            await record(db, principal, "console.sign_out", details={"key_id": principal.key_id})
        return Redirect("/console/sign-in", status_code=303)

    @post("/language", status_code=303)
    async def choose_language(self, data: Annotated[dict[str, str], Form]) -> Redirect:
        """Remember the reader's language (a cookie) and go back to the page they were on."""
        lang = data.get("lang", "en")
        response = Redirect(safe_next(data.get("next")), status_code=303)
        if lang in LANGUAGES:
            response.set_cookie(
                LANGUAGE_COOKIE, lang, path="/console", max_age=SESSION_SECONDS * 90, httponly=True, samesite="strict"
            )
        return response

"""All HTTP routers, gathered in one place. `create_app` includes each on the app itself: FastAPI matches an
included router by walking into it, so one umbrella router around these would add a level to every request's route
match (~0.07 ms per request at the ASGI level, bench/RESULTS.md "HTTP search service")."""

from . import chat, classify, collections, embed, health, images, index, jobs, lifecycle, search, web

ROUTERS = tuple(
    module.router
    for module in (health, collections, index, jobs, search, images, classify, embed, chat, lifecycle, web)
)

"""All HTTP routers, gathered in one place. `create_app` includes each on the app itself: FastAPI matches an
included router by walking into it, so one umbrella router around these would add a level to every request's route
match (~0.07 ms per request at the ASGI level, bench/RESULTS.md "HTTP search service"). Routes are tried in this
order, so the service's most frequent request, a search, comes first (a stubbed search at the ASGI level: 192 ->
170 us as the fifth router -> the first)."""

from . import chat, classify, collections, embed, health, images, index, jobs, lifecycle, search, web

ROUTERS = tuple(
    module.router
    for module in (search, health, collections, index, jobs, images, classify, embed, chat, lifecycle, web)
)

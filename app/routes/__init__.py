"""All HTTP routers, gathered in one place."""

from fastapi import APIRouter

from . import chat, classify, collections, embed, health, images, index, jobs, lifecycle, search, web

api_router = APIRouter()
for module in (health, collections, index, jobs, search, images, classify, embed, chat, lifecycle, web):
    api_router.include_router(module.router)

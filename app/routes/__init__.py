"""All HTTP routers, gathered in one place."""

from fastapi import APIRouter

from . import chat, classify, collections, embed, health, images, index, jobs, search, web

api_router = APIRouter()
for module in (health, collections, index, jobs, search, images, classify, embed, chat, web):
    api_router.include_router(module.router)

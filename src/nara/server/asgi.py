"""ASGI entry point for uvicorn workers: ``nara.server.asgi:app`` (settings from NARA_* variables)."""

from nara.server.app import create_app

app = create_app()

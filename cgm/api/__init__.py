"""The service's HTTP API: ``create_app`` (the FastAPI application) and ``install`` (serve it
inside ``cgm run``)."""

from cgm.api.app import create_app
from cgm.api.server import install

__all__ = ["create_app", "install"]

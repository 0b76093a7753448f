"""HTTP API for enterprises: FastAPI app factory, auth, schemas, routers, services."""

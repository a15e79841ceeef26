"""Django's PostgreSQL backend with a health check at checkout that costs no round trip
(base.py). Settings name it as the engine wherever DATABASE_URL names PostgreSQL."""

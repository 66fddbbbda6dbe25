"""The web console: server-rendered pages (Jinja + htmx) for compliance officers, marketers
and auditors, served by the same Litestar app under ``/console``."""

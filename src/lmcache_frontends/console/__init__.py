"""The operator console: static pages at `GET /ui` (a server's, a coordinator's fleet page)."""

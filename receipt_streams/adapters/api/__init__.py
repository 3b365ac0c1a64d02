"""The HTTP API: client routes, the /sync view fed from the changelogs, token verification."""

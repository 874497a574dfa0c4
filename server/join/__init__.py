"""The ``/join/{job}`` page: a person opens a link on any device and its browser trains for the job.

``routes.install(app)`` adds the page and the static files: the page's own script and the
browser client bundle (``static/flaas-client.js``, built from ``frontend/client/``) with its
digits assets. The join token travels in the link's fragment (``#t=<token>``), which a browser
never sends, so no server log holds it; the page reads it and calls the public client API.
"""

from __future__ import annotations

from urllib.parse import quote

PREFIX = "/join"


def join_link(base_url: str, job_id: str, join_token: str) -> str:
    """The link a person opens (or a phone scans) to join: the token rides in the fragment."""
    return f"{base_url.rstrip('/')}{PREFIX}/{job_id}#t={quote(join_token, safe='')}"

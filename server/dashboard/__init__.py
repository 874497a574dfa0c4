"""The operator dashboard at ``/dashboard``: static pages that read the public JSON API.

``routes.install(app)`` adds the pages, the login gate and the static files. The session
cookie the login issues, which the API also accepts, is ``server.security``'s.
"""

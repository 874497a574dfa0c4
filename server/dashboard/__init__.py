"""The operator dashboard at ``/dashboard``: static pages that read the public JSON API.

``routes.install(app)`` adds the pages, the login gate and the static files; ``auth`` holds
the session cookie that the API also accepts as operator authentication.
"""

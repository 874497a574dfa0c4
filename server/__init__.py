"""The FLaaS coordinator: REST API, round state machine, storage and aggregation.

Importing this package is cheap on purpose: the ``flaas`` console script lives in
``server.cli`` and must start (for ``flaas client ...``) on a base install that has
none of the server dependencies.
"""

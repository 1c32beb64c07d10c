"""The HTTP routes, one router per audience, so auth scopes can attach per router:

- :mod:`~serving.routes.operations`: health, readiness, the no-op baseline, the active catalogue;
- :mod:`~serving.routes.channel`: events and decisions, for channel services;
- :mod:`~serving.routes.profiles`: reading, finding and erasing profiles;
- :mod:`~serving.routes.admin`: catalogue, models, snapshots and counters.
"""

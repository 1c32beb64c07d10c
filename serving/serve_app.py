"""The application object for ``serve build`` / ``serve deploy`` (``deploy/serve.yaml``).

Settings come from the ``RTIM_*`` environment of the replica (the Serve
config's ``runtime_env.env_vars``) and an optional ``RTIM_CONFIG`` file, as
for ``rtim serve``. Prefer :func:`serving.deployment.app_builder` with
``args`` when you write a config by hand.
"""

from __future__ import annotations

from serving.deployment import app_builder

app = app_builder({})

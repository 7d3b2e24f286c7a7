"""ASGI entry point: `daphne pacs_site.asgi:application`.

HTTP goes to Django; websockets (the live dashboard) to channels, with the
session's user (AuthMiddlewareStack) and only from pages of our own hosts
(AllowedHostsOriginValidator checks the Origin against ALLOWED_HOSTS).
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs_site.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from portal.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

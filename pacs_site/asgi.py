"""ASGI entry point: `daphne pacs_site.asgi:application`."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs_site.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

application = ProtocolTypeRouter({"http": django_asgi_app})

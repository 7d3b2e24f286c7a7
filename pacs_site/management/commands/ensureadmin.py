"""`manage.py ensureadmin`: make sure an administrator login exists.

On first run it creates user `admin` with a random password, written to
PACS_DATA_DIR/admin-password.txt (mode 600) and printed once.
"""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the 'admin' superuser with a random password if no superuser exists."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username="admin", **options):
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            path = settings.PACS_DATA_DIR / "admin-password.txt"
            hint = f" (first password in {path})" if path.exists() else ""
            return f"an administrator exists{hint}"
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        path = settings.PACS_DATA_DIR / "admin-password.txt"
        path.touch(mode=0o600)
        path.write_text(f"{username}\n{password}\n")
        return f"created administrator '{username}' with password {password} (also in {path})"
